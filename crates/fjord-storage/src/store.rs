//! Building the object store from a URL.
//!
//! - `file:///abs/dir` or a plain path: the local filesystem (the directory is created).
//! - `memory://`: in memory, for tests (lost on exit).
//! - `s3://bucket/optional/prefix`: S3 or a compatible server. Credentials, region and endpoint
//!   come from the standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...), as the
//!   `object_store` crate reads them.

use std::path::Path;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;

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
    let invalid = |reason: String| StoreUrlError::Invalid {
        url: url.to_string(),
        reason,
    };
    if url == "memory://" || url == "memory:" {
        return Ok(Arc::new(InMemory::new()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("no bucket name".into()));
        }
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
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
    local(Path::new(path)).map_err(invalid)
}

/// A local-filesystem store rooted at `dir` (created if missing).
pub fn local(dir: &Path) -> Result<Arc<dyn ObjectStore>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| e.to_string())?;
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
    }
}
