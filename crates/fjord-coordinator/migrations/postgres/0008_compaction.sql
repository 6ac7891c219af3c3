-- Fjord coordinator schema, version 8: compaction.
--
-- Compaction swaps replace a partition's index rows by rows in a new object (object merging,
-- log compaction); log compaction's checkpoint says below which offset a partition is
-- deduplicated.

ALTER TABLE fjord_partitions ADD COLUMN cleaned_to bigint NOT NULL DEFAULT 0;
