//! Log compaction's record-level rewrite (Kafka's log cleaner, `cleanup.policy=compact`): pure
//! functions over a partition's batches, with no I/O, used by the broker's cleaner duty.
//!
//! A cleaning works on a range of a partition's log in two steps, as Kafka's does:
//! 1. [`OffsetMap`]: the latest offset of every key in the *dirty* range (the records written
//!    since the last cleaning, up to the first offset not yet cleanable), built batch by batch
//!    with [`index_batches`], within a memory bound. Keys are kept whole (not hashed as Kafka
//!    does), so two keys can never be mistaken for one.
//! 2. [`clean_batches`]: every batch from the log start to the end of the dirty range is
//!    rewritten to keep only the records that are still the latest for their key: a record whose
//!    key maps to a later offset is dropped, a record without a key is dropped (a compacted topic
//!    refuses them, but a topic switched to `compact` may hold some), and a tombstone (null value)
//!    is dropped once its batch is older than `delete.retention.ms`.
//!
//! What a rewritten batch keeps: its base offset and `lastOffsetDelta` (so offsets never move
//! and the batch still covers its whole offset range; gaps inside it are normal in a compacted
//! log), base timestamp, producer id, epoch and base sequence, attributes (codec, timestamp
//! type) and each kept record's bytes unchanged (their deltas are relative to the unchanged
//! base offset and timestamp). Its record count, length, max timestamp (for `CreateTime`
//! batches: the largest kept record's, as Kafka recomputes it) and CRC are recomputed; its
//! records are recompressed with the same codec. A batch that loses nothing is kept
//! byte-for-byte; control batches are kept as they are.
//!
//! A batch that loses every record is dropped, not kept as an empty batch, with one exception
//! below. Kafka keeps the last batch of each producer as an empty batch because its broker
//! rebuilds producer state (the last sequence per producer id, for idempotence) by reading the
//! log; losing the batch would make a retry of that producer look like a sequence gap. Fjord
//! never rebuilds producer state from the log: the coordinator keeps it (and expires it on
//! `producer.id.expiration.ms`), independent of which batches survive, so per-producer empty
//! batches would protect nothing and would only cost bytes and index rows. Dropping batches
//! leaves offset gaps between batches, which consumers of compacted topics handle (a fetch in a
//! gap gets the next batch); [`ObjectPlan`] starts a new index row at each gap, because a row's
//! batches must be contiguous in offsets.
//!
//! The exception: with [`CleanParams::keep_last_batch`], the last batch of the run is kept even
//! when it loses every record, as an empty batch (header only, uncompressed, `lastOffsetDelta`
//! kept, record count 0), as Kafka writes them. A consumer only moves past offsets by receiving a
//! batch that covers them; were the log's tail a gap (its last records were superseded
//! tombstones that expired), a consumer fetching there would get nothing and never reach the
//! log end. The cleaner asks for it on the last run it rewrites.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use fjord_coordinator::{IndexRow, TopicPartition};

use crate::batch::{peek_header, BatchError, BatchHeader, HEADER_LEN};
use crate::object::ObjectBuilder;
use crate::records::{compress_records, decompress_records, parse_records, ScanError};

/// Bytes an [`OffsetMap`] entry costs besides its key: the offset, the hash table's slot and
/// the key's allocation header, roughly.
const ENTRY_OVERHEAD: usize = 48;

/// Why batches could not be cleaned.
#[derive(Debug, thiserror::Error)]
pub enum CleanError {
    /// A batch's framing or records do not parse.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// A batch header does not parse.
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// The latest offset of each key seen in a dirty range, with a memory bound.
#[derive(Debug, Default)]
pub struct OffsetMap {
    offsets: HashMap<Box<[u8]>, i64>,
    bytes: usize,
}

impl OffsetMap {
    /// An empty map.
    pub fn new() -> Self {
        OffsetMap::default()
    }

    /// The latest offset recorded for `key`.
    pub fn get(&self, key: &[u8]) -> Option<i64> {
        self.offsets.get(key).copied()
    }

    /// Records `offset` for `key` if it is later than what the map holds.
    pub fn put(&mut self, key: &[u8], offset: i64) {
        match self.offsets.get_mut(key) {
            Some(at) => *at = (*at).max(offset),
            None => {
                self.bytes += key.len() + ENTRY_OVERHEAD;
                self.offsets.insert(key.into(), offset);
            }
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Approximate memory held, in bytes.
    pub fn memory(&self) -> usize {
        self.bytes
    }

    /// Approximate memory the map would hold after adding `keys`.
    pub fn memory_with<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) -> usize {
        let mut extra = 0;
        let mut seen = std::collections::HashSet::new();
        for key in keys {
            if !self.offsets.contains_key(key) && seen.insert(key) {
                extra += key.len() + ENTRY_OVERHEAD;
            }
        }
        self.bytes + extra
    }
}

/// One batch of a run: its base offset, header and bytes.
pub type RunBatch<'a> = (i64, BatchHeader, &'a [u8]);

/// The batches of a run (batches as stored, their base offsets already real) with their base
/// offsets and headers, in order.
pub fn split_batches(run: &[u8]) -> Result<Vec<RunBatch<'_>>, CleanError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < run.len() {
        let header = peek_header(&run[pos..])?;
        let bytes = &run[pos..pos + header.size];
        let base = i64::from_be_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
        out.push((base, header, bytes));
        pos += header.size;
    }
    Ok(out)
}

/// The keys of the run's records and their offsets, in offset order (control batches and
/// records without a key contribute nothing). At most `cap` decompressed bytes per batch.
pub fn keys_of(run: &[u8], cap: u64) -> Result<Vec<(Vec<u8>, i64)>, CleanError> {
    let mut out = Vec::new();
    for (base, header, bytes) in split_batches(run)? {
        if header.is_control() {
            continue;
        }
        let body = decompress_records(bytes, cap)?;
        for record in parse_records(&body, header.record_count)? {
            if let Some(key) = record.key {
                out.push((key.to_vec(), base + record.offset_delta));
            }
        }
    }
    Ok(out)
}

/// Adds the keys of a run's records to `map`.
pub fn index_batches(run: &[u8], map: &mut OffsetMap, cap: u64) -> Result<(), CleanError> {
    for (key, offset) in keys_of(run, cap)? {
        map.put(&key, offset);
    }
    Ok(())
}

/// What decides which records a cleaning keeps besides the map.
#[derive(Debug, Clone, Copy)]
pub struct CleanParams {
    /// Tombstones in batches whose max timestamp is before this (ms) are dropped (cleaning time
    /// minus `delete.retention.ms`); later ones are kept.
    pub delete_tombstones_before_ms: i64,
    /// Most decompressed bytes read from one batch.
    pub cap: u64,
    /// Keep the run's last batch, empty if need be (see the module docs).
    pub keep_last_batch: bool,
}

/// What a cleaning did, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Batches read.
    pub batches_in: u64,
    /// Batches written (kept whole or rewritten).
    pub batches_out: u64,
    /// Records read.
    pub records_in: u64,
    /// Records kept.
    pub records_out: u64,
    /// Tombstones dropped.
    pub tombstones_dropped: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// The smallest max timestamp of the batches in which a tombstone was kept: when the oldest
    /// kept tombstone becomes removable (plus `delete.retention.ms`).
    pub oldest_kept_tombstone_ms: Option<i64>,
}

/// One batch after cleaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanedBatch {
    /// Its base offset (unchanged).
    pub base_offset: i64,
    /// Its header after cleaning.
    pub header: BatchHeader,
    /// Its bytes (real base offset written in).
    pub bytes: Bytes,
}

impl CleanedBatch {
    /// The last offset the batch covers.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.header.last_offset_delta)
    }
}

/// Cleans a run of batches (in offset order, real base offsets) against `map`: see the module
/// docs for what is kept. Returns the surviving batches in order.
pub fn clean_batches(
    run: &[u8],
    map: &OffsetMap,
    params: CleanParams,
    stats: &mut CleanStats,
) -> Result<Vec<CleanedBatch>, CleanError> {
    let mut out = Vec::new();
    let batches = split_batches(run)?;
    let count = batches.len();
    for (i, (base, header, bytes)) in batches.into_iter().enumerate() {
        stats.batches_in += 1;
        stats.bytes_in += bytes.len() as u64;
        stats.records_in += u64::try_from(header.record_count).unwrap_or(0);
        let mut cleaned = clean_batch(base, header, bytes, map, params, stats)?;
        if cleaned.is_none() && params.keep_last_batch && i + 1 == count {
            cleaned = Some(empty_batch(base, bytes)?);
        }
        if let Some(cleaned) = cleaned {
            stats.batches_out += 1;
            stats.bytes_out += cleaned.bytes.len() as u64;
            stats.records_out += u64::try_from(cleaned.header.record_count).unwrap_or(0);
            out.push(cleaned);
        }
    }
    Ok(out)
}

fn clean_batch(
    base: i64,
    header: BatchHeader,
    bytes: &[u8],
    map: &OffsetMap,
    params: CleanParams,
    stats: &mut CleanStats,
) -> Result<Option<CleanedBatch>, CleanError> {
    let whole = || CleanedBatch {
        base_offset: base,
        header,
        bytes: Bytes::copy_from_slice(bytes),
    };
    if header.is_control() {
        return Ok(Some(whole()));
    }
    let body = decompress_records(bytes, params.cap)?;
    let records = parse_records(&body, header.record_count)?;
    let drop_tombstones = header.max_timestamp < params.delete_tombstones_before_ms;
    let mut kept = Vec::with_capacity(records.len());
    for record in &records {
        let offset = base + record.offset_delta;
        let keep = match record.key {
            None => false,
            Some(key) => {
                let latest = map.get(key).is_none_or(|latest| latest <= offset);
                let tombstone = !record.has_value;
                if latest && tombstone && drop_tombstones {
                    stats.tombstones_dropped += 1;
                }
                latest && !(tombstone && drop_tombstones)
            }
        };
        if keep {
            kept.push(record);
        }
    }
    if kept.iter().any(|r| !r.has_value) {
        let t = header.max_timestamp;
        stats.oldest_kept_tombstone_ms =
            Some(stats.oldest_kept_tombstone_ms.map_or(t, |o| o.min(t)));
    }
    if kept.len() == records.len() {
        return Ok(Some(whole()));
    }
    if kept.is_empty() {
        return Ok(None);
    }
    let mut plain = Vec::with_capacity(kept.iter().map(|r| r.bytes.len()).sum());
    for record in &kept {
        plain.extend_from_slice(record.bytes);
    }
    let compressed = compress_records(header.compression(), &plain)?;
    let max_timestamp = if header.is_log_append_time() {
        header.max_timestamp
    } else {
        kept.iter()
            .map(|r| header.base_timestamp.wrapping_add(r.timestamp_delta))
            .max()
            .unwrap_or(header.max_timestamp)
    };
    let size = HEADER_LEN + compressed.len();
    let mut out = BytesMut::with_capacity(size);
    out.extend_from_slice(&bytes[..HEADER_LEN]);
    out.extend_from_slice(&compressed);
    let batch_length = i32::try_from(size - 12)
        .map_err(|_| BatchError::Invalid("a cleaned batch exceeds 2 GiB".into()))?;
    let record_count =
        i32::try_from(kept.len()).map_err(|_| BatchError::Invalid("too many records".into()))?;
    out[0..8].copy_from_slice(&base.to_be_bytes());
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    out[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
    out[57..61].copy_from_slice(&record_count.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    let bytes = out.freeze();
    let header = peek_header(&bytes)?;
    Ok(Some(CleanedBatch {
        base_offset: base,
        header,
        bytes,
    }))
}

/// The empty form of a batch: its header with no records (uncompressed), its offsets, producer
/// fields and timestamps kept.
fn empty_batch(base: i64, bytes: &[u8]) -> Result<CleanedBatch, CleanError> {
    let mut out = BytesMut::with_capacity(HEADER_LEN);
    out.extend_from_slice(&bytes[..HEADER_LEN]);
    out[0..8].copy_from_slice(&base.to_be_bytes());
    out[8..12].copy_from_slice(&((HEADER_LEN - 12) as i32).to_be_bytes());
    let attributes = i16::from_be_bytes([out[21], out[22]]) & !0x07;
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    out[57..61].copy_from_slice(&0i32.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    let bytes = out.freeze();
    let header = peek_header(&bytes)?;
    Ok(CleanedBatch {
        base_offset: base,
        header,
        bytes,
    })
}

/// A per-partition object of cleaned batches and the index rows that point into it.
#[derive(Debug, Clone)]
pub struct ObjectPlan {
    /// The object's bytes (Fjord's object format: one chunk, the partition's batches).
    pub object: Bytes,
    /// The rows: maximal runs of offset-contiguous batches, in order.
    pub rows: Vec<IndexRow>,
}

/// Lays out cleaned batches of `tp` as one object to be stored under `object_key`. `None` when
/// no batch survived (the rows they replace simply go).
pub fn plan_object(
    tp: TopicPartition,
    batches: &[CleanedBatch],
    object_key: &str,
    broker_id: i32,
    now_ms: i64,
) -> Option<ObjectPlan> {
    if batches.is_empty() {
        return None;
    }
    let total: usize = batches.iter().map(|b| b.bytes.len()).sum();
    let mut builder = ObjectBuilder::with_capacity(total);
    let mut rows: Vec<IndexRow> = Vec::new();
    for batch in batches {
        let (position, _) = builder.push(
            tp.topic_id,
            tp.partition,
            &batch.bytes,
            batch.header.offset_count(),
            batch.header.max_timestamp,
        );
        match rows.last_mut() {
            Some(row) if row.last_offset + 1 == batch.base_offset => {
                row.last_offset = batch.last_offset();
                row.length += batch.bytes.len() as u64;
                row.max_timestamp = row.max_timestamp.max(batch.header.max_timestamp);
            }
            _ => rows.push(IndexRow {
                base_offset: batch.base_offset,
                last_offset: batch.last_offset(),
                object_key: object_key.to_string(),
                position,
                length: batch.bytes.len() as u64,
                max_timestamp: batch.header.max_timestamp,
            }),
        }
    }
    Some(ObjectPlan {
        object: builder.finish(broker_id, now_ms),
        rows,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::batch::{materialize, validate_produced};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    /// (key, value) records; `None` value is a tombstone.
    type Kv<'a> = (Option<&'a str>, Option<&'a str>);

    fn batch(
        base: i64,
        records: &[Kv],
        ts: i64,
        producer: i64,
        compression: Compression,
    ) -> Vec<u8> {
        let records: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(i, (k, v))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: producer,
                producer_epoch: if producer >= 0 { 3 } else { -1 },
                timestamp_type: TimestampType::Creation,
                offset: base + i as i64,
                sequence: if producer >= 0 {
                    100 + i as i32
                } else {
                    i as i32
                },
                timestamp: ts + i as i64,
                key: k.map(|k| Bytes::copy_from_slice(k.as_bytes())),
                value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    fn run(batches: &[Vec<u8>]) -> Vec<u8> {
        batches.concat()
    }

    /// Decodes cleaned batches: (offset, key, value) per record, checking every batch as a
    /// consumer would (CRC, framing).
    fn decode(batches: &[CleanedBatch]) -> Vec<(i64, Option<String>, Option<String>)> {
        let mut out = Vec::new();
        for b in batches {
            let mut bytes = b.bytes.clone();
            let sets = RecordBatchDecoder::decode_all(&mut bytes).unwrap();
            for set in sets {
                for r in set.records {
                    out.push((
                        r.offset,
                        r.key.map(|k| String::from_utf8(k.to_vec()).unwrap()),
                        r.value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
                    ));
                }
            }
        }
        out
    }

    fn map_of(run: &[u8]) -> OffsetMap {
        let mut map = OffsetMap::new();
        index_batches(run, &mut map, 1 << 20).unwrap();
        map
    }

    const KEEP_TOMBSTONES: CleanParams = CleanParams {
        delete_tombstones_before_ms: i64::MIN,
        cap: 1 << 20,
        keep_last_batch: false,
    };

    #[test]
    fn keeps_the_latest_record_per_key_at_its_offset() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let log = run(&[
                batch(
                    0,
                    &[
                        (Some("a"), Some("a0")),
                        (Some("b"), Some("b0")),
                        (Some("c"), Some("c0")),
                    ],
                    1000,
                    7,
                    compression,
                ),
                batch(
                    3,
                    &[(Some("a"), Some("a1")), (None, Some("keyless"))],
                    2000,
                    -1,
                    compression,
                ),
                batch(
                    5,
                    &[(Some("b"), Some("b1")), (Some("d"), Some("d0"))],
                    3000,
                    7,
                    compression,
                ),
            ]);
            let map = map_of(&log);
            assert_eq!(
                (map.get(b"a"), map.get(b"b"), map.get(b"c")),
                (Some(3), Some(5), Some(2))
            );
            let mut stats = CleanStats::default();
            let cleaned = clean_batches(&log, &map, KEEP_TOMBSTONES, &mut stats).unwrap();
            let s = |v: &str| Some(v.to_string());
            assert_eq!(
                decode(&cleaned),
                vec![
                    (2, s("c"), s("c0")),
                    (3, s("a"), s("a1")),
                    (5, s("b"), s("b1")),
                    (6, s("d"), s("d0"))
                ],
                "{compression:?}"
            );
            // Every batch still covers its whole offset range; producer fields survive.
            let first = &cleaned[0];
            assert_eq!((first.base_offset, first.header.last_offset_delta), (0, 2));
            assert_eq!(first.header.record_count, 1);
            assert_eq!(
                (
                    first.header.producer_id,
                    first.header.producer_epoch,
                    first.header.base_sequence
                ),
                (7, 3, 100)
            );
            let codec = match compression {
                Compression::None => 0,
                Compression::Gzip => 1,
                Compression::Snappy => 2,
                Compression::Lz4 => 3,
                Compression::Zstd => 4,
            };
            assert_eq!(first.header.compression(), codec, "same codec");
            assert_eq!(first.header.base_timestamp, 1000);
            assert_eq!(first.header.max_timestamp, 1002, "the kept record's time");
            assert_eq!(
                cleaned[1].header.last_offset_delta, 1,
                "a dropped last record keeps the range"
            );
            // The untouched last batch is kept byte for byte.
            assert_eq!(
                &cleaned[2].bytes[..],
                &log[log.len() - cleaned[2].bytes.len()..]
            );
            // Rewritten batches validate as produced ones would (CRC, framing).
            validate_produced(&cleaned[2].bytes).unwrap();
            assert_eq!(stats.records_in, 7);
            assert_eq!(stats.records_out, 4);
        }
    }

    #[test]
    fn batches_that_lose_every_record_go_and_rows_split_at_the_gap() {
        let log = run(&[
            batch(
                0,
                &[(Some("a"), Some("1")), (Some("b"), Some("1"))],
                10,
                -1,
                Compression::None,
            ),
            batch(
                2,
                &[(Some("a"), Some("2")), (Some("b"), Some("2"))],
                20,
                -1,
                Compression::None,
            ),
            batch(4, &[(Some("c"), Some("1"))], 30, -1, Compression::None),
            batch(5, &[(Some("a"), Some("3"))], 40, -1, Compression::None),
        ]);
        let map = map_of(&log);
        let mut stats = CleanStats::default();
        let cleaned = clean_batches(&log, &map, KEEP_TOMBSTONES, &mut stats).unwrap();
        let bases: Vec<i64> = cleaned.iter().map(|b| b.base_offset).collect();
        assert_eq!(bases, vec![2, 4, 5]);
        let tp = TopicPartition {
            topic_id: uuid::Uuid::new_v4(),
            partition: 3,
        };
        let plan = plan_object(tp, &cleaned, "k", 1, 99).unwrap();
        let ranges: Vec<(i64, i64)> = plan
            .rows
            .iter()
            .map(|r| (r.base_offset, r.last_offset))
            .collect();
        assert_eq!(ranges, vec![(2, 5)], "contiguous batches share a row");
        // Rows read back through materialize give the batches at their offsets.
        let row = &plan.rows[0];
        let bytes = &plan.object[row.position as usize..(row.position + row.length) as usize];
        let (read, next) = materialize(bytes, row.base_offset, 0, usize::MAX).unwrap();
        assert_eq!(next, 6);
        assert_eq!(read.len(), bytes.len());
        let footer = crate::object::read_footer(&plan.object).unwrap();
        assert_eq!(footer.chunks.len(), 1);
        assert_eq!(footer.chunks[0].partition, 3);

        // A gap between survivors starts a new row.
        let log = run(&[
            batch(0, &[(Some("a"), Some("1"))], 10, -1, Compression::None),
            batch(1, &[(Some("b"), Some("1"))], 20, -1, Compression::None),
            batch(2, &[(Some("c"), Some("1"))], 30, -1, Compression::None),
            batch(3, &[(Some("b"), Some("2"))], 40, -1, Compression::None),
        ]);
        let cleaned = clean_batches(&log, &map_of(&log), KEEP_TOMBSTONES, &mut stats).unwrap();
        let plan = plan_object(tp, &cleaned, "k", 1, 99).unwrap();
        let ranges: Vec<(i64, i64)> = plan
            .rows
            .iter()
            .map(|r| (r.base_offset, r.last_offset))
            .collect();
        assert_eq!(ranges, vec![(0, 0), (2, 3)]);
        assert!(plan_object(tp, &[], "k", 1, 99).is_none());
    }

    #[test]
    fn tombstones_stay_for_delete_retention_then_go() {
        let log = run(&[
            batch(
                0,
                &[(Some("a"), Some("1")), (Some("b"), Some("1"))],
                1000,
                -1,
                Compression::Lz4,
            ),
            batch(2, &[(Some("a"), None)], 5000, -1, Compression::Lz4),
        ]);
        let map = map_of(&log);
        let mut stats = CleanStats::default();
        // The tombstone's batch is younger than the horizon: it stays, and hides the older value.
        let params = CleanParams {
            delete_tombstones_before_ms: 5000,
            cap: 1 << 20,
            keep_last_batch: false,
        };
        let cleaned = clean_batches(&log, &map, params, &mut stats).unwrap();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            decode(&cleaned),
            vec![(1, s("b"), s("1")), (2, s("a"), None)]
        );
        assert_eq!(stats.tombstones_dropped, 0);
        // Older than the horizon: gone, and with it the key.
        let params = CleanParams {
            delete_tombstones_before_ms: 5001,
            cap: 1 << 20,
            keep_last_batch: false,
        };
        let cleaned = clean_batches(&log, &map, params, &mut stats).unwrap();
        assert_eq!(decode(&cleaned), vec![(1, s("b"), s("1"))]);
        assert_eq!(stats.tombstones_dropped, 1);
        // At the end of what is cleaned, the emptied last batch stays, empty, so that consumers
        // can still reach the log end.
        let params = CleanParams {
            keep_last_batch: true,
            ..params
        };
        let cleaned = clean_batches(&log, &map, params, &mut stats).unwrap();
        assert_eq!(decode(&cleaned), vec![(1, s("b"), s("1"))]);
        let last = &cleaned[1];
        assert_eq!((last.base_offset, last.last_offset()), (2, 2));
        assert_eq!(last.header.record_count, 0);
        assert_eq!(last.header.compression(), 0);
        assert_eq!(last.bytes.len(), HEADER_LEN);
        let crc = u32::from_be_bytes(last.bytes[17..21].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(&last.bytes[21..]));
    }

    /// Records after the map's range (not yet indexed) and keys the map does not hold are kept:
    /// a map built over a dirty range never drops what it did not see.
    #[test]
    fn records_beyond_the_map_are_kept_and_cleaning_is_idempotent() {
        let dirty = batch(
            0,
            &[(Some("a"), Some("1")), (Some("a"), Some("2"))],
            10,
            -1,
            Compression::Zstd,
        );
        let newer = batch(
            2,
            &[(Some("a"), Some("3")), (Some("z"), Some("1"))],
            20,
            -1,
            Compression::Zstd,
        );
        let map = map_of(&dirty);
        let log = run(&[dirty, newer]);
        let mut stats = CleanStats::default();
        let once = clean_batches(&log, &map, KEEP_TOMBSTONES, &mut stats).unwrap();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            decode(&once),
            vec![
                (1, s("a"), s("2")),
                (2, s("a"), s("3")),
                (3, s("z"), s("1"))
            ]
        );
        let again: Vec<u8> = once.iter().flat_map(|b| b.bytes.to_vec()).collect();
        let twice = clean_batches(&again, &map, KEEP_TOMBSTONES, &mut stats).unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn the_map_counts_its_memory_and_keeps_the_latest_offset() {
        let mut map = OffsetMap::new();
        map.put(b"key", 5);
        map.put(b"key", 3);
        assert_eq!(map.get(b"key"), Some(5));
        assert_eq!(map.len(), 1);
        let one = map.memory();
        assert_eq!(map.memory_with([&b"key"[..]]), one);
        assert_eq!(map.memory_with([&b"new"[..], &b"new"[..]]), 2 * one);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = batch(0, &[(Some("a"), Some("1"))], 10, -1, Compression::None);
        let map = OffsetMap::new();
        let mut stats = CleanStats::default();
        for cut in [5, 30, 61, good.len() - 1] {
            assert!(clean_batches(&good[..cut], &map, KEEP_TOMBSTONES, &mut stats).is_err());
        }
        let mut bad = good.clone();
        bad[57..61].copy_from_slice(&9i32.to_be_bytes());
        assert!(clean_batches(&bad, &map, KEEP_TOMBSTONES, &mut stats).is_err());
    }
}
