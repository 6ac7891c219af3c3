//! Reads of the log index: offsets, rows in a range, and rows by timestamp (through the
//! partition's time index).

use super::*;

impl State {
    /// Offsets of a partition.
    pub fn partition_offsets(&self, tp: TopicPartition) -> Result<PartitionOffsets> {
        let p = self.partition(tp)?;
        Ok(PartitionOffsets {
            log_start: p.log_start,
            high_watermark: p.high_watermark,
        })
    }

    /// Rows from an offset on, up to about `max_bytes`.
    pub fn index_rows(
        &self,
        tp: TopicPartition,
        from: i64,
        max_bytes: u64,
    ) -> Result<Vec<IndexRow>> {
        let p = self.partition(tp)?;
        let start = p
            .rows
            .range(..=from)
            .next_back()
            .filter(|(_, row)| row.last_offset >= from)
            .map(|(base, _)| *base)
            .unwrap_or(from);
        let mut rows = Vec::new();
        let mut bytes = 0u64;
        for row in p.rows.range(start..).map(|(_, row)| row) {
            if !rows.is_empty() && bytes + row.length > max_bytes {
                break;
            }
            bytes += row.length;
            rows.push(row.clone());
        }
        Ok(rows)
    }

    /// First row with a max timestamp at or after `timestamp`.
    pub fn row_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: i64,
    ) -> Result<Option<IndexRow>> {
        let p = self.partition(tp)?;
        Ok(p.time_index
            .range(timestamp..)
            .next()
            .and_then(|(_, base)| p.rows.get(base))
            .cloned())
    }

    /// The earliest row holding the partition's largest timestamp.
    pub fn row_with_max_timestamp(&self, tp: TopicPartition) -> Result<Option<IndexRow>> {
        let p = self.partition(tp)?;
        Ok(p.time_index
            .get_max()
            .and_then(|(_, base)| p.rows.get(base))
            .cloned())
    }

    pub(super) fn partition(&self, tp: TopicPartition) -> Result<&PartitionState> {
        self.partitions.get(&tp).ok_or_else(|| {
            CoordinatorError::UnknownTopic(format!("{}/{}", tp.topic_id, tp.partition))
        })
    }
}
