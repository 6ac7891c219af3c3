//! The records inside a v2 record batch, read without trusting the producer: a streaming scan
//! that decompresses through a fixed-size buffer and stops at a hard cap, and a cheap framing
//! check of uncompressed batches.
//!
//! Fjord stores batches as producers send them and never decompresses them on the produce or
//! fetch path. The few places that need record-level facts (a ListOffsets by timestamp that
//! lands inside a batch) must not trust a small compressed batch to inflate to something
//! reasonable: a few kilobytes of zstd can claim gigabytes. [`scan_records`] therefore
//! decompresses incrementally (gzip, lz4 and zstd as streams; snappy block by block, each
//! block's declared length checked before it is allocated), parses only the fixed fields at the
//! front of each record and skips the rest, and gives up with [`ScanError::TooLarge`] once the
//! decompressed bytes pass the cap. Memory stays at a few buffers whatever the batch claims.
//!
//! Record layout (KIP-98): `length varint | attributes i8 | timestampDelta varlong |
//! offsetDelta varint | key | value | headers`, lengths zigzag-encoded.

use std::io::{self, Read};

use crate::batch::{peek_header, BatchError, HEADER_LEN};

/// Most decompressed bytes [`scan_records`] reads from one batch by default: far above what a
/// batch within `max.message.bytes` holds with real data, far below what a decompression bomb
/// claims.
pub const MAX_SCANNED_BYTES: u64 = 64 << 20;

/// Why a batch's records could not be scanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The batch header or the records are malformed.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// Decompressing would produce more than the cap: a batch no real producer makes.
    #[error("records decompress to more than {0} bytes")]
    TooLarge(u64),
    /// The compression codec id is not one Kafka defines.
    #[error("unknown compression codec {0}")]
    UnknownCodec(i16),
}

/// One record's position and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordTime {
    /// Offset relative to the batch's base offset.
    pub offset_delta: i64,
    /// The record's timestamp (the batch's max timestamp for `LogAppendTime` batches).
    pub timestamp: i64,
}

/// Calls `f` with each record of the batch at the start of `batch`, in order, until it returns
/// `false` or the records end. At most `cap` decompressed bytes are read.
pub fn scan_records(
    batch: &[u8],
    cap: u64,
    mut f: impl FnMut(RecordTime) -> bool,
) -> Result<(), ScanError> {
    let header = peek_header(batch)?;
    let body = &batch[HEADER_LEN..header.size];
    let log_append_time = header.is_log_append_time();
    let base_timestamp = header.base_timestamp;
    let mut reader = Capped {
        inner: decompressor(header.compression(), body, cap)?,
        left: cap,
        cap,
    };
    for _ in 0..header.record_count.max(0) {
        let record = match read_record_front(&mut reader) {
            Ok(r) => r,
            Err(e) => return Err(io_error(e, cap)),
        };
        let time = RecordTime {
            offset_delta: record.offset_delta,
            timestamp: if log_append_time {
                header.max_timestamp
            } else {
                base_timestamp.wrapping_add(record.timestamp_delta)
            },
        };
        if !f(time) {
            return Ok(());
        }
        let skip = record.rest;
        let skipped = io::copy(&mut (&mut reader).take(skip), &mut io::sink())
            .map_err(|e| io_error(e, cap))?;
        if skipped != skip {
            return Err(corrupt("a record is cut short"));
        }
    }
    Ok(())
}

/// Checks that an uncompressed batch's records fill it exactly and number `record_count`.
/// (Compressed batches are not opened on the produce path; [`scan_records`] bounds any later
/// look inside them.)
pub fn check_uncompressed_framing(batch: &[u8]) -> Result<(), BatchError> {
    let header = peek_header(batch)?;
    if header.compression() != 0 {
        return Ok(());
    }
    let mut body = &batch[HEADER_LEN..header.size];
    let mut count: i64 = 0;
    while !body.is_empty() {
        let length = read_varint(&mut body)
            .map_err(|_| BatchError::Invalid("a record length does not parse".into()))?;
        let length = usize::try_from(length)
            .ok()
            .filter(|l| *l <= body.len())
            .ok_or_else(|| {
                BatchError::Invalid(format!(
                    "a record of {length} bytes does not fit in its batch"
                ))
            })?;
        body = &body[length..];
        count += 1;
    }
    if count != i64::from(header.record_count) {
        return Err(BatchError::Invalid(format!(
            "the batch holds {count} records but its header says {}",
            header.record_count
        )));
    }
    Ok(())
}

/// One record of a batch, parsed in place: its fixed fields, its key, whether it has a value,
/// and its whole encoding (length prefix included), which is valid in any batch with the same
/// base offset and base timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// Offset relative to the batch's base offset.
    pub offset_delta: i64,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// The key; `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Whether the value is non-null (a null value is a tombstone).
    pub has_value: bool,
    /// The record's bytes, from its length varint to its last header.
    pub bytes: &'a [u8],
}

/// The records section of the batch at the start of `batch`, decompressed (at most `cap`
/// bytes; a batch that inflates further is [`ScanError::TooLarge`]).
pub fn decompress_records(batch: &[u8], cap: u64) -> Result<Vec<u8>, ScanError> {
    let header = peek_header(batch)?;
    let body = &batch[HEADER_LEN..header.size];
    if header.compression() == 0 {
        return Ok(body.to_vec());
    }
    let mut reader = Capped {
        inner: decompressor(header.compression(), body, cap)?,
        left: cap,
        cap,
    };
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(cap as usize));
    reader.read_to_end(&mut out).map_err(|e| io_error(e, cap))?;
    Ok(out)
}

/// Parses `count` records from a decompressed records section; they must fill it exactly.
pub fn parse_records(mut body: &[u8], count: i32) -> Result<Vec<RawRecord<'_>>, ScanError> {
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 16));
    for _ in 0..count.max(0) {
        let start = body;
        let length =
            read_varint(&mut body).map_err(|_| corrupt("a record length does not parse"))?;
        let length = usize::try_from(length)
            .ok()
            .filter(|l| *l <= body.len())
            .ok_or_else(|| corrupt("a record does not fit in its batch"))?;
        let prefix = start.len() - body.len();
        let mut rec = &body[..length];
        body = &body[length..];
        let bytes = &start[..prefix + length];
        let bad = |_| corrupt("a record's fields do not parse");
        if rec.is_empty() {
            return Err(corrupt("an empty record"));
        }
        rec = &rec[1..]; // attributes
        let timestamp_delta = read_varint(&mut rec).map_err(bad)?;
        let offset_delta = read_varint(&mut rec).map_err(bad)?;
        let key_len = read_varint(&mut rec).map_err(bad)?;
        let key = if key_len < 0 {
            None
        } else {
            let n = usize::try_from(key_len)
                .ok()
                .filter(|n| *n <= rec.len())
                .ok_or_else(|| corrupt("a record key does not fit in its record"))?;
            let key = &rec[..n];
            rec = &rec[n..];
            Some(key)
        };
        let value_len = read_varint(&mut rec).map_err(bad)?;
        if value_len > 0 && usize::try_from(value_len).map_or(true, |n| n > rec.len()) {
            return Err(corrupt("a record value does not fit in its record"));
        }
        out.push(RawRecord {
            offset_delta,
            timestamp_delta,
            key,
            has_value: value_len >= 0,
            bytes,
        });
    }
    if !body.is_empty() {
        return Err(corrupt("bytes left over after the last record"));
    }
    Ok(out)
}

/// Indices (within the batch) of the batch's records that have no key: a compacted topic
/// refuses them, as Kafka does.
pub fn records_without_key(batch: &[u8], cap: u64) -> Result<Vec<usize>, ScanError> {
    let header = peek_header(batch)?;
    let body = decompress_records(batch, cap)?;
    Ok(parse_records(&body, header.record_count)?
        .iter()
        .enumerate()
        .filter(|(_, r)| r.key.is_none())
        .map(|(i, _)| i)
        .collect())
}

/// Compresses a records section with Kafka codec `codec` (0 none, 1 gzip, 2 snappy in the
/// xerial framing Java clients write, 3 lz4 frames with independent blocks, 4 zstd).
pub fn compress_records(codec: i16, records: &[u8]) -> Result<Vec<u8>, ScanError> {
    use std::io::Write;
    let failed = |e: io::Error| corrupt(&format!("compressing records: {e}"));
    Ok(match codec {
        0 => records.to_vec(),
        1 => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(records).map_err(failed)?;
            enc.finish().map_err(failed)?
        }
        2 => {
            let mut out = Vec::with_capacity(records.len() / 2 + 64);
            out.extend_from_slice(XERIAL_MAGIC);
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut encoder = snap::raw::Encoder::new();
            for block in records.chunks(32 * 1024) {
                let compressed = encoder
                    .compress_vec(block)
                    .map_err(|e| corrupt(&format!("snappy: {e}")))?;
                out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            out
        }
        3 => {
            let mut enc = lz4::EncoderBuilder::new()
                .block_mode(lz4::BlockMode::Independent)
                .block_size(lz4::BlockSize::Max64KB)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .build(Vec::new())
                .map_err(failed)?;
            enc.write_all(records).map_err(failed)?;
            let (out, result) = enc.finish();
            result.map_err(failed)?;
            out
        }
        4 => zstd::encode_all(records, 3).map_err(failed)?,
        other => return Err(ScanError::UnknownCodec(other)),
    })
}

fn corrupt(why: &str) -> ScanError {
    ScanError::Batch(BatchError::Corrupt(why.into()))
}

fn io_error(e: io::Error, cap: u64) -> ScanError {
    if e.kind() == io::ErrorKind::FileTooLarge {
        ScanError::TooLarge(cap)
    } else {
        corrupt(&format!("records do not decode: {e}"))
    }
}

/// The fields at the front of a record, and how many of its bytes follow them.
struct RecordFront {
    timestamp_delta: i64,
    offset_delta: i64,
    rest: u64,
}

fn read_record_front(r: &mut impl Read) -> io::Result<RecordFront> {
    let length = read_varint_from(r)?;
    if length < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "negative record length",
        ));
    }
    let mut counted = Counting { inner: r, read: 0 };
    let mut attributes = [0u8; 1];
    counted.read_exact(&mut attributes)?;
    let timestamp_delta = read_varint_from(&mut counted)?;
    let offset_delta = read_varint_from(&mut counted)?;
    let rest = u64::try_from(length)
        .ok()
        .and_then(|l| l.checked_sub(counted.read))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "record length too short"))?;
    Ok(RecordFront {
        timestamp_delta,
        offset_delta,
        rest,
    })
}

/// A zigzag varlong (at most 10 bytes) from a slice, advancing it.
fn read_varint(buf: &mut &[u8]) -> io::Result<i64> {
    read_varint_from(buf)
}

fn read_varint_from(r: &mut impl Read) -> io::Result<i64> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let mut byte = [0u8; 1];
        r.read_exact(&mut byte)?;
        value |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "varint too long",
    ))
}

struct Counting<'a, R> {
    inner: &'a mut R,
    read: u64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// A reader that fails with `FileTooLarge` once more than `cap` bytes were asked of it.
struct Capped<'a> {
    inner: Box<dyn Read + 'a>,
    left: u64,
    cap: u64,
}

impl Read for Capped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            return Err(too_large(self.cap));
        }
        let max = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn too_large(cap: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("decompressed records exceed {cap} bytes"),
    )
}

/// A streaming decompressor for codec `codec` over `body`.
fn decompressor<'a>(codec: i16, body: &'a [u8], cap: u64) -> Result<Box<dyn Read + 'a>, ScanError> {
    Ok(match codec {
        0 => Box::new(body),
        1 => Box::new(flate2::read::GzDecoder::new(body)),
        2 => Box::new(SnappyReader::new(body, cap)),
        3 => Box::new(lz4::Decoder::new(body).map_err(|e| corrupt(&format!("lz4 frame: {e}")))?),
        4 => Box::new(
            zstd::stream::read::Decoder::with_buffer(body)
                .map_err(|e| corrupt(&format!("zstd frame: {e}")))?,
        ),
        other => return Err(ScanError::UnknownCodec(other)),
    })
}

/// Kafka's snappy: xerial framing (a magic header, then `u32` length-prefixed raw blocks) or,
/// without the header, one raw block. Each block's declared length is checked against the cap
/// before its buffer is allocated.
struct SnappyReader<'a> {
    rest: &'a [u8],
    /// Whether blocks are length-prefixed (xerial) or the rest is one raw block.
    framed: bool,
    block: Vec<u8>,
    at: usize,
    left: u64,
    cap: u64,
}

const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

impl<'a> SnappyReader<'a> {
    fn new(body: &'a [u8], cap: u64) -> Self {
        let framed = body.len() >= XERIAL_HEADER_LEN && body.starts_with(XERIAL_MAGIC);
        SnappyReader {
            rest: if framed {
                &body[XERIAL_HEADER_LEN..]
            } else {
                body
            },
            framed,
            block: Vec::new(),
            at: 0,
            left: cap,
            cap,
        }
    }

    /// Decompresses the next block; false at the end.
    fn next_block(&mut self) -> io::Result<bool> {
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        if self.rest.is_empty() {
            return Ok(false);
        }
        let compressed = if self.framed {
            if self.rest.len() < 4 {
                return Err(invalid("snappy block length cut short".into()));
            }
            let len = u32::from_be_bytes([self.rest[0], self.rest[1], self.rest[2], self.rest[3]])
                as usize;
            let block = self
                .rest
                .get(4..4 + len)
                .ok_or_else(|| invalid("snappy block cut short".into()))?;
            self.rest = &self.rest[4 + len..];
            block
        } else {
            std::mem::take(&mut self.rest)
        };
        let len = snap::raw::decompress_len(compressed)
            .map_err(|e| invalid(format!("snappy block header: {e}")))?;
        if len as u64 > self.left {
            return Err(too_large(self.cap));
        }
        self.left -= len as u64;
        self.block.resize(len, 0);
        snap::raw::Decoder::new()
            .decompress(compressed, &mut self.block)
            .map_err(|e| invalid(format!("snappy block: {e}")))?;
        self.at = 0;
        Ok(true)
    }
}

impl Read for SnappyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn batch(compression: Compression, values: &[Vec<u8>], ts: i64) -> Vec<u8> {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: ts + 10 * i as i64,
                key: Some(format!("k{i}").into_bytes().into()),
                value: Some(v.clone().into()),
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

    fn times(batch: &[u8], cap: u64) -> Result<Vec<(i64, i64)>, ScanError> {
        let mut out = Vec::new();
        scan_records(batch, cap, |t| {
            out.push((t.offset_delta, t.timestamp));
            true
        })?;
        Ok(out)
    }

    #[test]
    fn every_codec_scans_the_same_records() {
        let values: Vec<Vec<u8>> = (0..50).map(|i| vec![b'a' + (i % 26) as u8; 300]).collect();
        let expected: Vec<(i64, i64)> = (0..50).map(|i| (i, 1000 + 10 * i)).collect();
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(compression, &values, 1000);
            assert_eq!(
                times(&b, MAX_SCANNED_BYTES).unwrap(),
                expected,
                "{compression:?}"
            );
        }
    }

    /// A few kilobytes that inflate to hundreds of megabytes are refused at the cap, without
    /// ever holding more than a buffer of them.
    #[test]
    fn a_decompression_bomb_stops_at_the_cap() {
        let huge = vec![vec![0u8; 200 << 20]];
        for compression in [Compression::Zstd, Compression::Lz4, Compression::Gzip] {
            let b = batch(compression, &huge, 0);
            assert!(b.len() < 2 << 20, "{compression:?}: {} bytes", b.len());
            let err = times(&b, 1 << 20).unwrap_err();
            assert!(
                matches!(err, ScanError::TooLarge(_)),
                "{compression:?}: {err}"
            );
        }
        // Snappy allocates block by block: a block claiming more than the cap is refused before
        // its buffer exists.
        let b = batch(Compression::Snappy, &huge, 0);
        assert!(matches!(
            times(&b, 1 << 20).unwrap_err(),
            ScanError::TooLarge(_)
        ));
    }

    #[test]
    fn the_scan_stops_when_asked() {
        let values: Vec<Vec<u8>> = (0..10).map(|_| vec![1u8; 10]).collect();
        let b = batch(Compression::Zstd, &values, 0);
        let mut seen = 0;
        scan_records(&b, MAX_SCANNED_BYTES, |t| {
            seen += 1;
            t.offset_delta < 3
        })
        .unwrap();
        assert_eq!(seen, 4);
    }

    #[test]
    fn uncompressed_framing_must_match_the_header() {
        let values: Vec<Vec<u8>> = (0..3).map(|_| vec![7u8; 20]).collect();
        let good = batch(Compression::None, &values, 0);
        check_uncompressed_framing(&good).unwrap();
        // Claim four records: the header no longer matches the records.
        let mut bad = good.clone();
        bad[57..61].copy_from_slice(&4i32.to_be_bytes());
        assert!(check_uncompressed_framing(&bad).is_err());
        // A record length beyond the batch.
        let mut bad = good.clone();
        bad[HEADER_LEN] = 0x7e; // zigzag 63: longer than what follows
        let err = check_uncompressed_framing(&bad);
        assert!(err.is_err(), "{err:?}");
        // Compressed batches are not opened here.
        check_uncompressed_framing(&batch(Compression::Zstd, &values, 0)).unwrap();
    }
}
