//! Records as the forwarder carries them, and the headers of retry and dead-letter records.
//!
//! Owns the header names (`fjord.*`) and both directions of the envelope: writing a record to the
//! retry or dead-letter topic with headers naming its original position, attempts and last error;
//! reading a record back from the retry topic into the original record plus its history.
//! Invariants: a record read back from the retry topic is delivered with its original topic,
//! partition, offset, timestamp, key, value and headers (the `fjord.*` bookkeeping headers are
//! removed), so the handler cannot tell the path it took except by the attempt number; the
//! `fjord.error` header is at most [`MAX_ERROR_BYTES`] long (a handler's reason or a gRPC status
//! message has no limit of its own), so the headers add a bounded size to a record.

use bytes::Bytes;

use crate::proto;

/// The original topic of a retry or dead-letter record.
pub const ORIGINAL_TOPIC: &str = "fjord.original.topic";
pub const ORIGINAL_PARTITION: &str = "fjord.original.partition";
pub const ORIGINAL_OFFSET: &str = "fjord.original.offset";
/// Milliseconds since the epoch.
pub const ORIGINAL_TIMESTAMP: &str = "fjord.original.timestamp";
/// The source cluster's name.
pub const CLUSTER: &str = "fjord.cluster";
pub const SUBSCRIPTION: &str = "fjord.subscription";
/// Attempts made so far.
pub const ATTEMPTS: &str = "fjord.attempts";
/// The last error (or the handler's DEAD_LETTER reason).
pub const ERROR: &str = "fjord.error";
/// On a dead-letter record written without its value and user headers because the whole record
/// was over the size the cluster accepts: why, and the sizes left out.
pub const DROPPED: &str = "fjord.dropped";
/// Rounds through the retry topic so far, this one included (retry records only).
pub const RETRY_ROUND: &str = "fjord.retry.round";
/// When the record is due again, milliseconds since the epoch (retry records only).
pub const RETRY_DUE_MS: &str = "fjord.retry.due-ms";

const PREFIX: &str = "fjord.";

/// The longest `fjord.error` value written, in bytes; a longer error is cut at a character
/// boundary and says how long it was.
pub const MAX_ERROR_BYTES: usize = 1024;

/// `error` cut to [`MAX_ERROR_BYTES`].
pub fn capped_error(error: &str) -> String {
    if error.len() <= MAX_ERROR_BYTES {
        return error.to_string();
    }
    let note = format!("... ({} bytes, cut)", error.len());
    let mut end = MAX_ERROR_BYTES.saturating_sub(note.len());
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &error[..end])
}

/// A Kafka header.
pub type Header = (String, Option<Bytes>);

/// A fetched record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    pub timestamp_ms: i64,
}

impl Record {
    /// Key and value bytes (what flow control counts).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.len()) + self.value.as_ref().map_or(0, |v| v.len())
    }
}

/// Where a record came from originally and what happened to it so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub cluster: String,
    /// Attempts before this fetch.
    pub attempts: u32,
    /// Rounds through the retry topic before this fetch.
    pub round: u32,
    /// When it may be attempted (retry records), milliseconds since the epoch.
    pub due_ms: Option<i64>,
    pub last_error: String,
}

impl Origin {
    /// The origin of a record fetched from a source topic.
    pub fn source(record: &Record, cluster: &str) -> Origin {
        Origin {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            cluster: cluster.to_string(),
            attempts: 0,
            round: 0,
            due_ms: None,
            last_error: String::new(),
        }
    }
}

/// A record fetched from the retry topic: its history, or why it cannot be understood.
pub fn parse_retry_record(record: &Record, subscription: &str) -> Result<Origin, String> {
    let text = |name: &str| -> Result<String, String> {
        let value = record
            .headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
            .ok_or_else(|| format!("retry record without header {name}"))?;
        String::from_utf8(value.to_vec()).map_err(|_| format!("header {name} is not UTF-8"))
    };
    fn number<T: std::str::FromStr>(name: &str, s: String) -> Result<T, String> {
        s.parse()
            .map_err(|_| format!("header {name} is not a number: {s:?}"))
    }
    let owner = text(SUBSCRIPTION)?;
    if owner != subscription {
        return Err(format!("retry record of subscription {owner:?}"));
    }
    Ok(Origin {
        topic: text(ORIGINAL_TOPIC)?,
        partition: number(ORIGINAL_PARTITION, text(ORIGINAL_PARTITION)?)?,
        offset: number(ORIGINAL_OFFSET, text(ORIGINAL_OFFSET)?)?,
        timestamp_ms: number(ORIGINAL_TIMESTAMP, text(ORIGINAL_TIMESTAMP)?)?,
        cluster: text(CLUSTER)?,
        attempts: number(ATTEMPTS, text(ATTEMPTS)?)?,
        round: number(RETRY_ROUND, text(RETRY_ROUND)?)?,
        due_ms: Some(number(RETRY_DUE_MS, text(RETRY_DUE_MS)?)?),
        last_error: text(ERROR).unwrap_or_default(),
    })
}

/// The record's own headers, without the forwarder's bookkeeping.
pub fn user_headers(record: &Record) -> impl Iterator<Item = &Header> {
    record
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with(PREFIX))
}

/// The request for one attempt.
pub fn delivery(
    record: &Record,
    origin: &Origin,
    attempt: u32,
    subscription: &str,
) -> proto::Delivery {
    proto::Delivery {
        topic: origin.topic.clone(),
        partition: origin.partition,
        offset: origin.offset,
        key: record.key.clone(),
        value: record.value.clone(),
        headers: user_headers(record)
            .map(|(k, v)| proto::Header {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        timestamp_ms: origin.timestamp_ms,
        cluster: origin.cluster.clone(),
        attempt,
        subscription: subscription.to_string(),
    }
}

/// A record to produce to a retry or dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    pub topic: String,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

impl OutRecord {
    /// Its size as the producer counts it against `message.max.bytes`: key, value and headers,
    /// with a few bytes of framing per header (an overestimate, never an underestimate).
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()) + 10)
            .sum();
        self.key.as_ref().map_or(0, |k| k.len())
            + self.value.as_ref().map_or(0, |v| v.len())
            + headers
    }

    /// The record without its value and user headers (key and `fjord.*` headers kept), with a
    /// [`DROPPED`] header saying why: what a dead-letter record becomes when it is too large for
    /// the cluster. The original is still in its source topic, at the position the headers name.
    pub fn without_payload(&self, why: &str) -> OutRecord {
        let value_len = self.value.as_ref().map_or(0, |v| v.len());
        let mut headers: Vec<Header> = self
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with(PREFIX))
            .cloned()
            .collect();
        let user = self.headers.len() - headers.len();
        headers.push(header(
            DROPPED,
            format!(
                "value ({value_len} bytes) and {user} user headers left out: {}",
                capped_error(why)
            ),
        ));
        OutRecord {
            topic: self.topic.clone(),
            key: self.key.clone(),
            value: None,
            headers,
        }
    }
}

fn header(name: &str, value: impl ToString) -> Header {
    (name.to_string(), Some(Bytes::from(value.to_string())))
}

fn envelope(
    topic: &str,
    record: &Record,
    origin: &Origin,
    attempts: u32,
    error: &str,
    subscription: &str,
) -> OutRecord {
    let mut headers: Vec<Header> = user_headers(record).cloned().collect();
    headers.extend([
        header(ORIGINAL_TOPIC, &origin.topic),
        header(ORIGINAL_PARTITION, origin.partition),
        header(ORIGINAL_OFFSET, origin.offset),
        header(ORIGINAL_TIMESTAMP, origin.timestamp_ms),
        header(CLUSTER, &origin.cluster),
        header(SUBSCRIPTION, subscription),
        header(ATTEMPTS, attempts),
        header(ERROR, capped_error(error)),
    ]);
    OutRecord {
        topic: topic.to_string(),
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
    }
}

/// The dead-letter record of a record that made `attempts` attempts.
pub fn dead_letter(
    topic: &str,
    record: &Record,
    origin: &Origin,
    attempts: u32,
    error: &str,
    subscription: &str,
) -> OutRecord {
    envelope(topic, record, origin, attempts, error, subscription)
}

/// The retry record of a record that made `attempts` attempts, due at `due_ms`.
pub fn retry(
    topic: &str,
    record: &Record,
    origin: &Origin,
    attempts: u32,
    error: &str,
    subscription: &str,
    due_ms: i64,
) -> OutRecord {
    let mut out = envelope(topic, record, origin, attempts, error, subscription);
    out.headers.extend([
        header(RETRY_ROUND, origin.round + 1),
        header(RETRY_DUE_MS, due_ms),
    ]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            topic: "orders".into(),
            partition: 3,
            offset: 42,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![
                ("trace".into(), Some(Bytes::from_static(b"abc"))),
                ("nil".into(), None),
            ],
            timestamp_ms: 1_700_000_000_000,
        }
    }

    /// A retry record read back is delivered exactly as the original was.
    #[test]
    fn retry_round_trip_restores_the_original() {
        let r = record();
        let origin = Origin::source(&r, "a");
        let out = retry("orders.retry", &r, &origin, 3, "boom", "sub", 99);
        let fetched = Record {
            topic: "orders.retry".into(),
            partition: 0,
            offset: 7,
            key: out.key.clone(),
            value: out.value.clone(),
            headers: out.headers.clone(),
            timestamp_ms: 5,
        };
        let back = parse_retry_record(&fetched, "sub").unwrap();
        assert_eq!(back.topic, "orders");
        assert_eq!((back.partition, back.offset), (3, 42));
        assert_eq!(back.timestamp_ms, r.timestamp_ms);
        assert_eq!((back.attempts, back.round, back.due_ms), (3, 1, Some(99)));
        assert_eq!(back.last_error, "boom");
        assert_eq!(
            delivery(&fetched, &back, 4, "sub"),
            delivery(&r, &origin, 4, "sub"),
            "the handler sees the original record"
        );
        // A second round counts on.
        let again = retry("orders.retry", &fetched, &back, 6, "boom", "sub", 100);
        assert_eq!(
            again
                .headers
                .iter()
                .filter(|(k, _)| k == RETRY_ROUND)
                .count(),
            1
        );
        let fetched2 = Record {
            headers: again.headers,
            ..fetched
        };
        assert_eq!(parse_retry_record(&fetched2, "sub").unwrap().round, 2);
    }

    #[test]
    fn dead_letter_headers_name_the_original() {
        let r = record();
        let out = dead_letter("dlq", &r, &Origin::source(&r, "a"), 2, "bad", "sub");
        let get = |n: &str| {
            out.headers
                .iter()
                .find(|(k, _)| k == n)
                .and_then(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(ORIGINAL_TOPIC), "orders");
        assert_eq!(get(ORIGINAL_PARTITION), "3");
        assert_eq!(get(ORIGINAL_OFFSET), "42");
        assert_eq!(get(ATTEMPTS), "2");
        assert_eq!(get(ERROR), "bad");
        assert_eq!(get("trace"), "abc", "user headers are kept");
        assert_eq!(out.key, r.key);
    }

    /// Issue 14, item 2: a handler's DEAD_LETTER reason (or a gRPC status message) went into the
    /// `fjord.error` header whole, so a record that fitted its source topic could no longer fit
    /// the dead-letter topic, and its write was retried forever.
    #[test]
    fn the_error_header_is_capped() {
        let r = record();
        let reason = "é".repeat(100_000);
        let out = dead_letter("dlq", &r, &Origin::source(&r, "a"), 1, &reason, "sub");
        let error = out.headers.iter().find(|(k, _)| k == ERROR).unwrap();
        let value = error.1.as_ref().unwrap();
        assert!(value.len() <= MAX_ERROR_BYTES, "{}", value.len());
        let text = std::str::from_utf8(value).expect("cut at a character boundary");
        assert!(
            text.starts_with("éé") && text.ends_with("(200000 bytes, cut)"),
            "{text}"
        );
        assert!(out.size() < 2 * MAX_ERROR_BYTES, "{}", out.size());
        assert_eq!(capped_error("short"), "short");
    }

    #[test]
    fn a_record_without_payload_keeps_its_key_and_bookkeeping() {
        let mut r = record();
        r.value = Some(Bytes::from(vec![b'x'; 5000]));
        let out = dead_letter("dlq", &r, &Origin::source(&r, "a"), 1, "bad", "sub");
        let small = out.without_payload("MessageSizeTooLarge");
        assert_eq!(
            (small.key.clone(), small.value.clone()),
            (r.key.clone(), None)
        );
        assert!(small.headers.iter().all(|(k, _)| k.starts_with("fjord.")));
        let dropped = small.headers.iter().find(|(k, _)| k == DROPPED).unwrap();
        let text = String::from_utf8(dropped.1.clone().unwrap().to_vec()).unwrap();
        assert!(
            text.contains("value (5000 bytes) and 2 user headers"),
            "{text}"
        );
        assert!(
            small.size() + 4000 < out.size(),
            "{} vs {}",
            small.size(),
            out.size()
        );
        assert!(small
            .headers
            .iter()
            .any(|(k, v)| k == ORIGINAL_OFFSET && v.as_deref() == Some(&b"42"[..])));
    }

    #[test]
    fn malformed_or_foreign_retry_records_are_refused() {
        let r = record();
        assert!(parse_retry_record(&r, "sub").is_err());
        let out = retry("t", &r, &Origin::source(&r, "a"), 1, "e", "other", 1);
        let fetched = Record {
            headers: out.headers,
            ..r
        };
        assert!(parse_retry_record(&fetched, "sub")
            .unwrap_err()
            .contains("other"));
    }
}
