-- Fjord coordinator schema, version 6: the object lifecycle.
--
-- Index rows wholly below their partition's log start are deleted when the log start moves
-- (retention, DeleteRecords), and an object whose last row goes is dead from then. Garbage
-- collection asks for dead objects oldest first instead of listing the bucket, through the
-- partial index below. Rows that earlier versions left below the log start go now.

CREATE INDEX fjord_objects_dead ON fjord_objects (dead_since) WHERE row_count = 0;

WITH gone AS (
    DELETE FROM fjord_index_rows AS r
    USING fjord_partitions AS p
    WHERE r.topic_id = p.topic_id AND r.partition = p.partition AND r.last_offset < p.log_start
    RETURNING r.object_key
), counts AS (
    SELECT object_key, count(*) AS n FROM gone GROUP BY object_key
)
UPDATE fjord_objects AS o
SET row_count = GREATEST(o.row_count - c.n, 0),
    dead_since = CASE
        WHEN o.row_count - c.n <= 0 THEN (extract(epoch FROM now()) * 1000)::bigint
        ELSE o.dead_since
    END
FROM counts AS c WHERE o.key = c.object_key;
