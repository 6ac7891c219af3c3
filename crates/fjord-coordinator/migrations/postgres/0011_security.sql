-- Fjord coordinator schema, version 11: security metadata (SCRAM credentials and Kafka ACLs).
-- Additive: three new tables.
--
-- fjord_scram_credentials holds one credential per (user, mechanism) as Kafka stores it: salt,
-- iterations, StoredKey and ServerKey, never a password. mechanism is Kafka's ScramMechanism
-- code (1 = SCRAM-SHA-256, 2 = SCRAM-SHA-512).
CREATE TABLE fjord_scram_credentials (
    user_name  text NOT NULL,
    mechanism  smallint NOT NULL,
    iterations integer NOT NULL,
    salt       bytea NOT NULL,
    stored_key bytea NOT NULL,
    server_key bytea NOT NULL,
    PRIMARY KEY (user_name, mechanism)
);

-- One row per ACL binding; every column is part of the key, so a binding is stored at most once.
-- The small integers are Kafka's codes (ResourceType, PatternType, AclOperation,
-- AclPermissionType).
CREATE TABLE fjord_acls (
    resource_type smallint NOT NULL,
    resource_name text NOT NULL,
    pattern_type  smallint NOT NULL,
    principal     text NOT NULL,
    host          text NOT NULL,
    operation     smallint NOT NULL,
    permission    smallint NOT NULL,
    PRIMARY KEY (resource_type, resource_name, pattern_type, principal, host, operation,
                 permission)
);

-- The ACL version: one row, bumped in the transaction of every change that adds or removes a
-- binding. Changes lock it first (SELECT ... FOR UPDATE), so they serialize on it.
CREATE TABLE fjord_acl_version (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint NOT NULL
);
INSERT INTO fjord_acl_version (id, version) VALUES (true, 0);
