-- Fjord coordinator schema, version 2: consumer groups.
--
-- Group ids, topic names and offset metadata are arbitrary strings from clients (Kafka allows
-- any string, including U+0000, which text cannot hold), so these tables store them as their
-- UTF-8 bytes: bytea compares bytewise, as the embedded coordinator orders strings. A group id may
-- be up to 32 KiB, more than a btree entry holds, so both tables are keyed by
-- group_key = sha256(group_id).
--
-- Offsets are keyed by topic name and have no foreign key to fjord_topics: like Kafka's, they
-- outlive the topic's deletion. A group exists while it has a row in either table.

-- Offsets committed by consumer groups, one per (group, topic, partition).
CREATE TABLE fjord_group_offsets (
    group_key           bytea GENERATED ALWAYS AS (sha256(group_id)) STORED,
    group_id            bytea NOT NULL,
    topic               bytea NOT NULL,
    partition           integer NOT NULL,
    committed_offset    bigint NOT NULL,
    leader_epoch        integer NOT NULL,
    metadata            bytea,
    commit_timestamp_ms bigint NOT NULL,
    PRIMARY KEY (group_key, topic, partition)
);

-- Each group's metadata blob (membership, generation, assignments), encoded by the broker.
CREATE TABLE fjord_groups (
    group_key  bytea GENERATED ALWAYS AS (sha256(group_id)) STORED PRIMARY KEY,
    group_id   bytea NOT NULL,
    state      bytea NOT NULL,
    updated_ms bigint NOT NULL
);
