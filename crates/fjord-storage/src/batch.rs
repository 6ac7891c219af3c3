//! Kafka record batches (magic v2) seen through their fixed 61-byte header.
//!
//! Fjord stores batches byte-for-byte as producers send them and never decompresses them on the
//! hot path, so only the header is parsed here. The layout is fixed by the Kafka protocol (see
//! KIP-98); `kafka-protocol`'s `RecordBatchDecoder` decodes whole batches including their
//! records, which is what the timestamp lookup uses, but is far too costly per produce request.
//!
//! ```text
//! 0  baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8
//! 17 crc u32 (CRC-32C of bytes 21..end) | 21 attributes i16 | 23 lastOffsetDelta i32
//! 27 baseTimestamp i64 | 35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16
//! 53 baseSequence i32 | 57 recordCount i32 | 61 records...
//! ```

use bytes::{Bytes, BytesMut};

/// Size of the v2 batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength`'s count starts (baseOffset + batchLength).
const LOG_OVERHEAD: usize = 12;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// Why a record set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Truncated or inconsistent framing.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// The stored CRC does not match the batch.
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// CRC in the header.
        stored: u32,
        /// CRC computed over the batch.
        computed: u32,
    },
    /// A message format older than v2 (magic 0 or 1).
    #[error("unsupported message format (magic {0}); Fjord accepts only v2 record batches")]
    UnsupportedMagic(i8),
    /// Structurally valid but not acceptable from a producer (e.g. a control batch).
    #[error("invalid record batch: {0}")]
    Invalid(String),
}

/// The parsed header of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Total size of the batch in bytes.
    pub size: usize,
    /// `attributes`.
    pub attributes: i16,
    /// `lastOffsetDelta`.
    pub last_offset_delta: i32,
    /// `baseTimestamp`.
    pub base_timestamp: i64,
    /// `maxTimestamp`.
    pub max_timestamp: i64,
    /// `producerId` (-1 when not idempotent).
    pub producer_id: i64,
    /// `producerEpoch`.
    pub producer_epoch: i16,
    /// `baseSequence`.
    pub base_sequence: i32,
    /// `recordCount`.
    pub record_count: i32,
}

impl BatchHeader {
    /// Number of offsets the batch spans.
    pub fn offset_count(&self) -> i64 {
        i64::from(self.last_offset_delta) + 1
    }

    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// Whether this is a control batch (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.attributes & 0x07
    }

    /// Whether the batch's records carry the log-append time (its max timestamp).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_TIMESTAMP_TYPE != 0
    }
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Reads the header of the batch at the start of `bytes` without checking its CRC. Only the
/// framing is validated: the header and `batchLength` must fit in `bytes`.
pub fn peek_header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if bytes.len() < LOG_OVERHEAD + 5 {
        return Err(BatchError::Corrupt(format!(
            "{} bytes cannot hold a batch header",
            bytes.len()
        )));
    }
    let magic = bytes[16] as i8;
    if magic != 2 {
        return Err(BatchError::UnsupportedMagic(magic));
    }
    let batch_length = i32_at(bytes, 8);
    let size = usize::try_from(batch_length)
        .ok()
        .and_then(|l| l.checked_add(LOG_OVERHEAD))
        .filter(|&s| s >= HEADER_LEN)
        .ok_or_else(|| BatchError::Corrupt(format!("batch length {batch_length} is invalid")))?;
    if size > bytes.len() {
        return Err(BatchError::Corrupt(format!(
            "batch claims {size} bytes, only {} present",
            bytes.len()
        )));
    }
    Ok(BatchHeader {
        size,
        attributes: i16_at(bytes, 21),
        last_offset_delta: i32_at(bytes, 23),
        base_timestamp: i64_at(bytes, 27),
        max_timestamp: i64_at(bytes, 35),
        producer_id: i64_at(bytes, 43),
        producer_epoch: i16_at(bytes, 51),
        base_sequence: i32_at(bytes, 53),
        record_count: i32_at(bytes, 57),
    })
}

/// Validates the batch at the start of `bytes` as a producer's batch: framing, CRC-32C, sane
/// counts. Returns its header.
pub fn validate_produced(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = peek_header(bytes)?;
    let stored = u32_at(bytes, 17);
    let computed = crc32c::crc32c(&bytes[21..header.size]);
    if stored != computed {
        return Err(BatchError::Crc { stored, computed });
    }
    if header.record_count <= 0 || header.last_offset_delta < 0 {
        return Err(BatchError::Invalid(format!(
            "batch has {} records and lastOffsetDelta {}",
            header.record_count, header.last_offset_delta
        )));
    }
    if header.record_count - 1 != header.last_offset_delta {
        return Err(BatchError::Invalid(format!(
            "lastOffsetDelta {} does not match {} records",
            header.last_offset_delta, header.record_count
        )));
    }
    if header.is_control() {
        return Err(BatchError::Invalid(
            "control batches may not be produced by clients".into(),
        ));
    }
    crate::records::check_uncompressed_framing(&bytes[..header.size])?;
    Ok(header)
}

/// Splits a produced record set into validated batches (zero-copy slices of `records`).
pub fn split_produced(records: &Bytes) -> Result<Vec<(Bytes, BatchHeader)>, BatchError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let header = validate_produced(&records[pos..])?;
        out.push((records.slice(pos..pos + header.size), header));
        pos += header.size;
    }
    if out.is_empty() {
        return Err(BatchError::Invalid("empty record set".into()));
    }
    Ok(out)
}

/// Stamps a batch with the log-append time: sets the timestamp-type attribute and
/// `maxTimestamp`, then recomputes the CRC (what Kafka does for `LogAppendTime` topics).
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    if batch.len() < HEADER_LEN {
        return;
    }
    let attributes = i16_at(batch, 21) | ATTR_TIMESTAMP_TYPE;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Copies the batches of `run` (a contiguous run of batches whose first offset is `base_offset`)
/// with their real base offsets written in, dropping whole batches that end before
/// `from_offset`, and stopping before `max_bytes` would be exceeded (keeping at least one batch).
/// Returns the bytes and the offset after the last batch included.
pub fn materialize(
    run: &[u8],
    base_offset: i64,
    from_offset: i64,
    max_bytes: usize,
) -> Result<(Bytes, i64), BatchError> {
    let mut out = BytesMut::new();
    let mut pos = 0;
    let mut offset = base_offset;
    while pos < run.len() {
        let header = peek_header(&run[pos..])?;
        let next = offset + header.offset_count();
        if next > from_offset {
            if !out.is_empty() && out.len() + header.size > max_bytes {
                break;
            }
            let start = out.len();
            out.extend_from_slice(&run[pos..pos + header.size]);
            out[start..start + 8].copy_from_slice(&offset.to_be_bytes());
        }
        offset = next;
        pos += header.size;
    }
    Ok((out.freeze(), offset))
}

/// The leading whole batches of `records` (batches as [`materialize`] returns them) that fit in
/// `max_bytes`, keeping at least one batch unless `max_bytes` is 0. A zero-copy slice; framing
/// that does not parse ends the slice there.
pub fn truncate_batches(records: &Bytes, max_bytes: usize) -> Bytes {
    if max_bytes == 0 {
        return Bytes::new();
    }
    let mut end = 0;
    while end < records.len() {
        let Ok(header) = peek_header(&records[end..]) else {
            break;
        };
        if end > 0 && end + header.size > max_bytes {
            break;
        }
        end += header.size;
    }
    records.slice(..end)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal valid uncompressed batch with `count` empty-value records.
    pub fn sample_batch(count: i32, producer_id: i64, base_sequence: i32, ts: i64) -> Bytes {
        let mut records = Vec::new();
        for i in 0..count {
            // length, attributes, timestampDelta, offsetDelta, keyLen(-1), valueLen(1), value, headers(0)
            let body = [0u8, 0, (i as u8) << 1, 1, 2, b'x', 0];
            records.push(body.len() as u8 * 2);
            records.extend_from_slice(&body);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.push(2);
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(count - 1).to_be_bytes());
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&producer_id.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&base_sequence.to_be_bytes());
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&records);
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(b)
    }

    #[test]
    fn validates_and_splits() {
        let mut set = sample_batch(3, -1, -1, 5).to_vec();
        set.extend_from_slice(&sample_batch(2, -1, -1, 6));
        let set = Bytes::from(set);
        let batches = split_produced(&set).unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].1.offset_count(), 3);
        assert_eq!(batches[1].1.max_timestamp, 6);
    }

    #[test]
    fn rejects_bad_crc_truncation_and_old_magic() {
        let good = sample_batch(1, -1, -1, 0);
        let mut bad = good.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            validate_produced(&bad),
            Err(BatchError::Crc { .. })
        ));
        assert!(matches!(
            validate_produced(&good[..good.len() - 1]),
            Err(BatchError::Corrupt(_))
        ));
        let mut old = good.to_vec();
        old[16] = 1;
        assert_eq!(
            validate_produced(&old),
            Err(BatchError::UnsupportedMagic(1))
        );
        assert!(split_produced(&Bytes::new()).is_err());
        let mut neg = good.to_vec();
        neg[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            validate_produced(&neg),
            Err(BatchError::Corrupt(_))
        ));
    }

    #[test]
    fn materialize_rewrites_offsets_and_skips() {
        let mut run = sample_batch(3, -1, -1, 0).to_vec();
        run.extend_from_slice(&sample_batch(2, -1, -1, 0));
        run.extend_from_slice(&sample_batch(4, -1, -1, 0));
        let (bytes, next) = materialize(&run, 100, 104, usize::MAX).unwrap();
        assert_eq!(next, 109);
        let first = peek_header(&bytes).unwrap();
        assert_eq!(i64_at(&bytes, 0), 103);
        assert_eq!(i64_at(&bytes, first.size), 105);
        // CRC is unaffected by the base offset.
        validate_produced(&bytes).unwrap();
        // max_bytes keeps at least one batch.
        let (bytes, next) = materialize(&run, 100, 100, 1).unwrap();
        assert_eq!(next, 103);
        assert_eq!(peek_header(&bytes).unwrap().size, bytes.len());
    }

    #[test]
    fn log_append_time_keeps_crc_valid() {
        let mut b = sample_batch(2, -1, -1, 5).to_vec();
        set_log_append_time(&mut b, 999);
        let h = validate_produced(&b).unwrap();
        assert_eq!(h.max_timestamp, 999);
        assert_ne!(h.attributes & ATTR_TIMESTAMP_TYPE, 0);
    }

    #[test]
    fn truncate_keeps_whole_batches_and_at_least_one() {
        let a = sample_batch(2, -1, -1, 1);
        let b = sample_batch(3, -1, -1, 2);
        let mut joined = BytesMut::new();
        joined.extend_from_slice(&a);
        joined.extend_from_slice(&b);
        let joined = joined.freeze();
        assert!(truncate_batches(&joined, 0).is_empty());
        assert_eq!(
            truncate_batches(&joined, 1),
            a,
            "the first batch even past the limit"
        );
        assert_eq!(truncate_batches(&joined, a.len() + b.len() - 1), a);
        assert_eq!(truncate_batches(&joined, a.len() + b.len()), joined);
        assert_eq!(truncate_batches(&joined, usize::MAX), joined);
        // Framing that does not parse ends the slice.
        assert_eq!(
            truncate_batches(&joined.slice(..a.len() + 10), usize::MAX),
            a
        );
    }
}
