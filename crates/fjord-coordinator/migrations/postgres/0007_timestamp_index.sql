-- Fjord coordinator schema, version 7: a time index for ListOffsets by timestamp.
--
-- Per partition, the retained index rows (those at or after the log start) whose max_timestamp
-- is larger than that of every retained row before them; base_offset and max_timestamp both
-- increase along it. The first row at or after the log start with a max timestamp >= T is the
-- entry with the smallest max_timestamp >= T; the earliest row holding the largest timestamp is
-- the entry with the largest. A commit appends the new rows that beat the last entry (the
-- partition rows it locks serialize that); raising a log start deletes the entries below the
-- new start and indexes the rows between it and the first entry left (in the same transaction).
-- Additive: existing tables are not changed; existing rows are backfilled below.
CREATE TABLE fjord_time_index (
    topic_id      uuid NOT NULL,
    partition     integer NOT NULL,
    base_offset   bigint NOT NULL,
    max_timestamp bigint NOT NULL,
    PRIMARY KEY (topic_id, partition, base_offset),
    FOREIGN KEY (topic_id, partition) REFERENCES fjord_partitions ON DELETE CASCADE
);
CREATE INDEX fjord_time_index_by_timestamp ON fjord_time_index (topic_id, partition, max_timestamp);

INSERT INTO fjord_time_index (topic_id, partition, base_offset, max_timestamp)
SELECT r.topic_id, r.partition, r.base_offset, r.max_timestamp
FROM (
    SELECT i.topic_id, i.partition, i.base_offset, i.max_timestamp,
           max(i.max_timestamp) OVER (
               PARTITION BY i.topic_id, i.partition ORDER BY i.base_offset
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
           ) AS before
    FROM fjord_index_rows AS i
    JOIN fjord_partitions AS p USING (topic_id, partition)
    WHERE i.last_offset >= p.log_start
) AS r
WHERE r.before IS NULL OR r.max_timestamp > r.before;
