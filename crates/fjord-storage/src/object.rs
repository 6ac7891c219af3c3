//! The immutable object format.
//!
//! ```text
//! "FJD1" | batches, grouped by (topic id, partition) in sorted order, each group in arrival order
//!        | footer (JSON ObjectFooter) | footer length u32 BE | footer CRC-32C u32 BE | "FJD1"
//! ```
//! Positions in the footer and in index rows are byte offsets from the start of the object.
//! The footer makes an object self-describing: a tool can verify an object or rebuild index
//! rows from the bucket alone, and garbage collection can prove what an object holds.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Magic bytes at both ends of an object.
pub const MAGIC: &[u8; 4] = b"FJD1";
const TRAILER_LEN: usize = 12;

/// One partition's group of batches inside an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Topic id.
    pub topic_id: Uuid,
    /// Partition.
    pub partition: i32,
    /// Byte position of the first batch.
    pub position: u64,
    /// Bytes of all batches of the group.
    pub length: u64,
    /// Number of batches.
    pub batches: u32,
    /// Offsets spanned by all batches.
    pub offset_count: i64,
    /// Largest max timestamp.
    pub max_timestamp: i64,
}

/// The footer of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectFooter {
    /// Format version.
    pub format: u32,
    /// Creation time in ms.
    pub created_ms: i64,
    /// Id of the broker that wrote the object.
    pub broker_id: i32,
    /// The chunks, in position order.
    pub chunks: Vec<Chunk>,
}

/// Errors reading an object.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// Not an object of this format, or damaged.
    #[error("not a valid Fjord object: {0}")]
    Invalid(String),
}

/// Builds an object: the body is appended batch by batch, then [`ObjectBuilder::finish`] adds
/// the footer.
pub struct ObjectBuilder {
    buf: BytesMut,
    chunks: Vec<Chunk>,
}

impl ObjectBuilder {
    /// An empty object with room for `capacity` body bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity + 4096);
        buf.extend_from_slice(MAGIC);
        ObjectBuilder {
            buf,
            chunks: Vec::new(),
        }
    }

    /// Appends one batch of a partition; batches of one partition must be appended together.
    /// Returns the batch's position and a mutable view of its bytes in the object.
    pub fn push(
        &mut self,
        topic_id: Uuid,
        partition: i32,
        batch: &[u8],
        offset_count: i64,
        max_timestamp: i64,
    ) -> (u64, &mut [u8]) {
        let position = self.buf.len() as u64;
        let same = self
            .chunks
            .last()
            .is_some_and(|c| c.topic_id == topic_id && c.partition == partition);
        if !same {
            self.chunks.push(Chunk {
                topic_id,
                partition,
                position,
                length: 0,
                batches: 0,
                offset_count: 0,
                max_timestamp: i64::MIN,
            });
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.length += batch.len() as u64;
            chunk.batches += 1;
            chunk.offset_count += offset_count;
            chunk.max_timestamp = chunk.max_timestamp.max(max_timestamp);
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(batch);
        (position, &mut self.buf[start..])
    }

    /// Adds the footer and returns the object bytes.
    pub fn finish(mut self, broker_id: i32, created_ms: i64) -> Bytes {
        let footer = ObjectFooter {
            format: 1,
            created_ms,
            broker_id,
            chunks: self.chunks,
        };
        // Serializing plain data into a Vec cannot fail.
        let json = serde_json::to_vec(&footer).unwrap_or_default();
        self.buf.extend_from_slice(&json);
        self.buf
            .extend_from_slice(&(json.len() as u32).to_be_bytes());
        self.buf
            .extend_from_slice(&crc32c::crc32c(&json).to_be_bytes());
        self.buf.extend_from_slice(MAGIC);
        self.buf.freeze()
    }
}

/// Reads and verifies the footer of a whole object.
pub fn read_footer(object: &[u8]) -> Result<ObjectFooter, ObjectError> {
    let n = object.len();
    if n < MAGIC.len() + TRAILER_LEN || &object[..4] != MAGIC || &object[n - 4..] != MAGIC {
        return Err(ObjectError::Invalid("missing magic".into()));
    }
    let trailer = &object[n - TRAILER_LEN..];
    let len = u32::from_be_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as usize;
    let crc = u32::from_be_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    let end = n - TRAILER_LEN;
    let start = end
        .checked_sub(len)
        .filter(|s| *s >= MAGIC.len())
        .ok_or_else(|| ObjectError::Invalid(format!("footer length {len} out of range")))?;
    let json = &object[start..end];
    if crc32c::crc32c(json) != crc {
        return Err(ObjectError::Invalid("footer CRC mismatch".into()));
    }
    serde_json::from_slice(json).map_err(|e| ObjectError::Invalid(format!("footer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::sample_batch;

    #[test]
    fn round_trip() {
        let t = Uuid::new_v4();
        let mut b = ObjectBuilder::with_capacity(0);
        let one = sample_batch(2, -1, -1, 7);
        let (pos, _) = b.push(t, 0, &one, 2, 7);
        assert_eq!(pos, 4);
        b.push(t, 0, &one, 2, 9);
        b.push(t, 1, &one, 2, 3);
        let obj = b.finish(0, 1);
        let footer = read_footer(&obj).unwrap();
        assert_eq!(footer.chunks.len(), 2);
        assert_eq!(footer.chunks[0].batches, 2);
        assert_eq!(footer.chunks[0].max_timestamp, 9);
        assert_eq!(footer.chunks[1].position, 4 + 2 * one.len() as u64);
        let c = &footer.chunks[1];
        assert_eq!(
            &obj[c.position as usize..(c.position + c.length) as usize],
            &one[..]
        );

        let mut damaged = obj.to_vec();
        let i = damaged.len() - 20;
        damaged[i] ^= 0xff;
        assert!(read_footer(&damaged).is_err());
        assert!(read_footer(b"FJD1").is_err());
    }
}
