-- Fjord coordinator schema, version 12: client quotas (KIP-13/KIP-55/KIP-546).
-- Additive: two new tables.
--
-- fjord_client_quotas holds one row per (entity, key). entity is the canonical JSON encoding of
-- the normalized entity (its parts sorted, user first; a default part has a null name), so one
-- entity has one spelling. quota_key is Kafka's key name (producer_byte_rate, ...); value is
-- finite and positive. An entity without rows has no quotas.
CREATE TABLE fjord_client_quotas (
    entity    text NOT NULL,
    quota_key text NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (entity, quota_key)
);

-- The quota version: one row, bumped in the transaction of every change. Changes lock it first
-- (SELECT ... FOR UPDATE), so they serialize on it.
CREATE TABLE fjord_quota_version (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint NOT NULL
);
INSERT INTO fjord_quota_version (id, version) VALUES (true, 0);
