-- Fjord coordinator schema, version 1.
--
-- Applied by PostgresCoordinator::connect inside one transaction, under an advisory lock, and
-- recorded in fjord_schema_migrations. Never edit an applied migration: add a new numbered file
-- (connect refuses a database whose recorded checksum differs from the embedded file).
--
-- Names and object keys use the "C" collation so that ORDER BY is bytewise, as in the embedded
-- coordinator. Offsets, positions, lengths and timestamps are bigint; u64 values above
-- i64::MAX are refused before they get here.

-- Topics. Configs hold only the keys set explicitly, as a JSON object of strings.
CREATE TABLE fjord_topics (
    name       text COLLATE "C" PRIMARY KEY,
    id         uuid NOT NULL UNIQUE,
    partitions integer NOT NULL CHECK (partitions >= 1),
    configs    jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- One row per partition. A commit locks the rows it touches (SELECT ... FOR UPDATE, sorted by
-- topic_id, partition), which serializes appends to a partition across brokers.
CREATE TABLE fjord_partitions (
    topic_id       uuid NOT NULL REFERENCES fjord_topics (id) ON DELETE CASCADE,
    partition      integer NOT NULL CHECK (partition >= 0),
    log_start      bigint NOT NULL DEFAULT 0,
    high_watermark bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (topic_id, partition)
);

-- The object index: a run of offsets [base_offset, last_offset] of one partition stored at
-- [position, position + length) of one object. Rows of a partition never overlap.
CREATE TABLE fjord_index_rows (
    topic_id      uuid NOT NULL,
    partition     integer NOT NULL,
    base_offset   bigint NOT NULL,
    last_offset   bigint NOT NULL,
    object_key    text COLLATE "C" NOT NULL,
    position      bigint NOT NULL,
    length        bigint NOT NULL,
    max_timestamp bigint NOT NULL,
    PRIMARY KEY (topic_id, partition, base_offset),
    FOREIGN KEY (topic_id, partition) REFERENCES fjord_partitions ON DELETE CASCADE
);

-- Idempotent-producer sequence memory per partition: the last few batches as
-- [[first_seq, last_seq, base_offset], ...], oldest first.
CREATE TABLE fjord_producer_state (
    topic_id    uuid NOT NULL,
    partition   integer NOT NULL,
    producer_id bigint NOT NULL,
    epoch       smallint NOT NULL,
    batches     jsonb NOT NULL,
    PRIMARY KEY (topic_id, partition, producer_id),
    FOREIGN KEY (topic_id, partition) REFERENCES fjord_partitions ON DELETE CASCADE
);

-- Producer ids handed out and their current epochs.
CREATE TABLE fjord_producers (
    producer_id bigint PRIMARY KEY,
    epoch       smallint NOT NULL
);
CREATE SEQUENCE fjord_producer_ids AS bigint MINVALUE 0 START WITH 0;

-- Objects the index knows, with how many index rows reference each. dead_since (ms) is set when
-- the count falls to 0 (or the object was committed with nothing appended); such an object is
-- garbage once older than the GC grace period.
CREATE TABLE fjord_objects (
    key        text COLLATE "C" PRIMARY KEY,
    row_count  bigint NOT NULL CHECK (row_count >= 0),
    dead_since bigint
);

-- Outcomes of recent commits by object key, so that committing an object again returns the
-- first outcomes. outcomes is NULL only inside the committing transaction (the row is inserted
-- first, as a claim). Rows are pruned by age.
CREATE TABLE fjord_commits (
    object_key   text COLLATE "C" PRIMARY KEY,
    outcomes     jsonb,
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fjord_commits_committed_at ON fjord_commits (committed_at);
