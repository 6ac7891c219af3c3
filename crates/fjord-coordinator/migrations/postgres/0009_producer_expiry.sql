-- Fjord coordinator schema, version 9: idempotent-producer memory expires (Kafka's
-- producer.id.expiration.ms). Additive: two columns with defaults and three indexes.
--
-- fjord_producer_state.last_append_ms is the commit time (ms) of the producer's last append to
-- the partition; fjord_producers.init_ms the time its id was last handed out or its epoch bumped.
-- Rows from before this migration get the migration's time (now() is evaluated once, so no
-- table rewrite), so they expire one expiration after the upgrade. The defaults stay for brokers
-- older than this migration during a rolling upgrade: their inserts get the insert time (their
-- upserts of an existing state leave its time alone, so such a state may expire early, which
-- costs its producer one UNKNOWN_PRODUCER_ID and an epoch bump).
ALTER TABLE fjord_producer_state ADD COLUMN last_append_ms bigint NOT NULL
    DEFAULT (extract(epoch FROM now()) * 1000)::bigint;
ALTER TABLE fjord_producers ADD COLUMN init_ms bigint NOT NULL
    DEFAULT (extract(epoch FROM now()) * 1000)::bigint;

-- Expiry finds old states and ids by range scans, and an id's remaining states by its id.
CREATE INDEX fjord_producer_state_last_append ON fjord_producer_state (last_append_ms);
CREATE INDEX fjord_producer_state_producer ON fjord_producer_state (producer_id);
CREATE INDEX fjord_producers_init ON fjord_producers (init_ms);
