//! Building the object store from a URL.
//!
//! - `file:///abs/dir` or a plain path: the local filesystem (the directory is created). Every
//!   object is fsynced, with its directory entry, before the PUT returns, as S3 makes a PUT
//!   durable before answering: the embedded coordinator fsyncs the commit that references it,
//!   and a machine crash must not leave an acknowledged record in an object the disk never got.
//!   Option `fsync=false` turns that off (faster on slow disks; a power loss can then lose
//!   acknowledged records).
//! - `memory://`: in memory, for tests (lost on exit).
//! - `s3://bucket/optional/prefix`: S3 or a compatible server. Credentials, region and endpoint
//!   come from the standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...), as the
//!   `object_store` crate reads them. Options given to [`from_url_with_options`] override those:
//!   any key of `object_store`'s `AmazonS3ConfigKey` (`endpoint`, `region`, `access_key_id`,
//!   `secret_access_key`, `virtual_hosted_style_request`, `allow_http`, ...) or of its HTTP client
//!   (`timeout`, `connect_timeout`, ...). Failed requests (5xx, `SlowDown`, timeouts, refused
//!   connections) are retried by `object_store` with backoff; see [`S3_RETRY`].
//!
//! Over HTTPS (AWS itself, or an `https://` endpoint) requests are signed without hashing the
//! body (`unsigned_payload`, as AWS's own SDKs do over TLS): TLS already protects the bytes in
//! transit, every record batch carries its own CRC-32C, and hashing each uploaded object with
//! SHA-256 cost about a quarter of the produce throughput against an S3-compatible server on
//! loopback. Plain-HTTP endpoints keep signed payloads; either can be overridden with the
//! `unsigned_payload` option or `AWS_UNSIGNED_PAYLOAD`.

use std::path::Path;
use std::sync::Arc;

use std::str::FromStr;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

/// How `object_store` retries one S3 request: up to 10 times with backoff from 100 ms to 5 s,
/// for at most 60 s. The writer retries whole uploads on top of this (its `retry_deadline`).
pub const S3_RETRY: RetryConfig = RetryConfig {
    backoff: BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(5),
        base: 2.0,
    },
    max_retries: 10,
    retry_timeout: Duration::from_secs(60),
};

/// Errors building a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreUrlError {
    /// The URL cannot be used.
    #[error("object store URL '{url}': {reason}")]
    Invalid {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Builds the store `url` names.
pub fn from_url(url: &str) -> Result<Arc<dyn ObjectStore>, StoreUrlError> {
    from_url_with_options(url, &[])
}

/// Builds the store `url` names, with `options` (key, value): S3's for `s3://`, `fsync` for a
/// local directory, none for `memory://`.
pub fn from_url_with_options(
    url: &str,
    options: &[(String, String)],
) -> Result<Arc<dyn ObjectStore>, StoreUrlError> {
    let invalid = |reason: String| StoreUrlError::Invalid {
        url: url.to_string(),
        reason,
    };
    if url == "memory://" || url == "memory:" {
        if let Some((key, _)) = options.first() {
            return Err(invalid(format!(
                "option '{key}' given, but memory:// stores take none"
            )));
        }
        return Ok(Arc::new(InMemory::new()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("no bucket name".into()));
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(S3_RETRY);
        let mut payload_choice = std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_some();
        for (key, value) in options {
            let parsed = AmazonS3ConfigKey::from_str(key)
                .map_err(|_| invalid(format!("unknown S3 option '{key}'")))?;
            payload_choice |= matches!(parsed, AmazonS3ConfigKey::UnsignedPayload);
            builder = builder.with_config(parsed, value);
        }
        if !payload_choice && over_tls(&builder) {
            builder = builder.with_unsigned_payload(true);
        }
        let s3 = builder.build().map_err(|e| invalid(e.to_string()))?;
        let prefix = prefix.trim_matches('/');
        return Ok(if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        });
    }
    let path = match url.strip_prefix("file://") {
        Some(p) => p,
        None if url.contains("://") => {
            return Err(invalid(
                "unsupported scheme (use file://, memory:// or s3://)".into(),
            ))
        }
        None => url,
    };
    let mut fsync = true;
    for (key, value) in options {
        match (key.as_str(), value.trim()) {
            ("fsync", "true") => fsync = true,
            ("fsync", "false") => fsync = false,
            ("fsync", other) => {
                return Err(invalid(format!("fsync={other}: expected true or false")))
            }
            (other, _) => {
                return Err(invalid(format!(
                    "unknown option '{other}' for a local directory (it takes fsync=true|false)"
                )))
            }
        }
    }
    local(Path::new(path), fsync).map_err(invalid)
}

/// Whether requests go over TLS: AWS's own endpoints, or an `https://` endpoint.
fn over_tls(builder: &AmazonS3Builder) -> bool {
    builder
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .is_none_or(|e| e.trim().to_ascii_lowercase().starts_with("https://"))
}

/// A local-filesystem store rooted at `dir` (created if missing); with `fsync`, a PUT returns only
/// once the object and its directory entry are on disk.
pub fn local(dir: &Path, fsync: bool) -> Result<Arc<dyn ObjectStore>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let fs = LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| e.to_string())?
        .with_fsync(fsync)
        // Hour directories of objects (see `gc`) go when their last object does.
        .with_automatic_cleanup(true);
    Ok(Arc::new(fs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(from_url("memory://").is_ok());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("objs");
        assert!(from_url(&format!("file://{}", p.display())).is_ok());
        assert!(p.is_dir());
        assert!(from_url("gopher://x").is_err());
        assert!(from_url("s3://").is_err());
        let opt = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(from_url_with_options("s3://b/p", &opt("timeout", "2s")).is_ok());
        assert!(from_url_with_options("s3://b/p", &opt("endpoint", "http://x:1")).is_ok());
        let err = from_url_with_options("s3://b", &opt("no_such_key", "1")).unwrap_err();
        assert!(err.to_string().contains("unknown S3 option"), "{err}");
        assert!(from_url_with_options("memory://", &opt("timeout", "2s")).is_err());
        let local = format!("file://{}", p.display());
        assert!(from_url_with_options(&local, &opt("fsync", "false")).is_ok());
        assert!(from_url_with_options(&local, &opt("fsync", "maybe")).is_err());
        assert!(from_url_with_options(&local, &opt("timeout", "2s")).is_err());
    }

    #[test]
    fn payloads_are_unsigned_only_over_tls() {
        let builder = |endpoint: Option<&str>| {
            let b = AmazonS3Builder::new();
            match endpoint {
                Some(e) => b.with_endpoint(e),
                None => b,
            }
        };
        assert!(over_tls(&builder(None)), "AWS itself");
        assert!(over_tls(&builder(Some("https://minio:9000"))));
        assert!(!over_tls(&builder(Some("http://127.0.0.1:9000"))));
    }
}
