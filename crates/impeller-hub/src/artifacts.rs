//! Where the hub keeps package files, `{sha256}.pkg`, through `object_store`: a folder by default
//! (`file:///…`, written with fsync: a put that returned is on disk) or an S3 bucket
//! (`s3://bucket/prefix`; credentials, region and endpoint from the usual `AWS_*` variables, so
//! MinIO or another S3-compatible store works with `AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true`).
//! Packages are immutable and named by their hash, so several hubs can share one bucket.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact store URL `{0}`: use file:///ABSOLUTE/PATH or s3://BUCKET[/PREFIX]")]
    Url(String),
    #[error("artifact store {url}: {source}")]
    Store { url: String, source: object_store::Error },
    #[error("artifact folder {path}: {source}")]
    Folder { path: String, source: std::io::Error },
}

#[derive(Clone, Debug)]
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

impl Artifacts {
    /// A folder on this machine, made if missing.
    pub fn folder(dir: &FsPath) -> Result<Artifacts, ArtifactError> {
        let folder = |source| ArtifactError::Folder { path: dir.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(folder)?;
        let dir = dir.canonicalize().map_err(folder)?;
        let url = format!("file://{}", dir.display());
        let local = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|source| ArtifactError::Store { url: url.clone(), source })?
            .with_fsync(true);
        Ok(Artifacts { store: Arc::new(local), prefix: Path::default(), url })
    }

    /// `file:///path` or `s3://bucket/prefix`; `options` (object_store's S3 keys, e.g.
    /// `aws_endpoint`, `aws_allow_http`) override the `AWS_*` environment.
    pub fn open(url: &str, options: &[(String, String)]) -> Result<Artifacts, ArtifactError> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(ArtifactError::Url(url.into()));
            }
            return Artifacts::folder(FsPath::new(path));
        }
        let Some(rest) = url.strip_prefix("s3://") else { return Err(ArtifactError::Url(url.into())) };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(ArtifactError::Url(url.into()));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in options {
            let key = key.parse().map_err(|source| ArtifactError::Store { url: url.into(), source })?;
            builder = builder.with_config(key, value);
        }
        let s3 = builder.build().map_err(|source| ArtifactError::Store { url: url.into(), source })?;
        let prefix = Path::parse(prefix.trim_matches('/')).map_err(|_| ArtifactError::Url(url.into()))?;
        Ok(Artifacts { store: Arc::new(s3), prefix, url: url.into() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn location(&self, sha256: &str) -> Path {
        self.prefix.clone().join(format!("{sha256}.pkg"))
    }

    fn error(&self, source: object_store::Error) -> ArtifactError {
        ArtifactError::Store { url: self.url.clone(), source }
    }

    /// Stores a package whole (a folder: temporary file, fsync, rename; S3: one PUT).
    pub async fn put(&self, sha256: &str, bytes: Vec<u8>) -> Result<(), ArtifactError> {
        self.store.put(&self.location(sha256), PutPayload::from(bytes)).await.map_err(|e| self.error(e))?;
        Ok(())
    }

    /// The whole package; `None` when the store does not hold it.
    pub async fn get(&self, sha256: &str) -> Result<Option<Bytes>, ArtifactError> {
        match self.store.get(&self.location(sha256)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.error(e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The package's size; `None` when the store does not hold it.
    pub async fn size(&self, sha256: &str) -> Result<Option<u64>, ArtifactError> {
        match self.store.head(&self.location(sha256)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Bytes `range` of the package (within its size).
    pub async fn get_range(&self, sha256: &str, range: Range<u64>) -> Result<Bytes, ArtifactError> {
        self.store.get_range(&self.location(sha256), range).await.map_err(|e| self.error(e))
    }
}

/// What a `Range` header asks of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByteRange {
    /// No header, or one this does not serve as a range (several ranges, another unit): the
    /// whole file, as RFC 9110 allows.
    Whole,
    Part(Range<u64>),
    /// 416.
    Unsatisfiable,
}

/// Reads one range (`N-`, `N-M`, `-N`) of a file of `size` bytes.
pub fn byte_range(header: Option<&str>, size: u64) -> ByteRange {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return ByteRange::Whole };
    let Some((start, end)) = spec.split_once('-').filter(|_| !spec.contains(',')) else { return ByteRange::Whole };
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        match end.parse::<u64>() {
            Ok(0) => return ByteRange::Unsatisfiable,
            Ok(n) => size.saturating_sub(n)..size,
            Err(_) => return ByteRange::Whole,
        }
    } else {
        let (Ok(first), last) = (start.parse::<u64>(), if end.is_empty() { Ok(u64::MAX) } else { end.parse() }) else {
            return ByteRange::Whole;
        };
        match last {
            Ok(last) if last >= first => first..last.saturating_add(1).min(size),
            _ => return ByteRange::Whole,
        }
    };
    if range.start >= size { ByteRange::Unsatisfiable } else { ByteRange::Part(range) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_as_rfc_9110_reads_them() {
        use ByteRange::{Part, Unsatisfiable, Whole};
        assert_eq!(byte_range(None, 10), Whole);
        assert_eq!(byte_range(Some("bytes=0-"), 10), Part(0..10));
        assert_eq!(byte_range(Some("bytes=4-"), 10), Part(4..10));
        assert_eq!(byte_range(Some("bytes=2-5"), 10), Part(2..6));
        assert_eq!(byte_range(Some("bytes=2-99"), 10), Part(2..10));
        assert_eq!(byte_range(Some("bytes=-3"), 10), Part(7..10));
        assert_eq!(byte_range(Some("bytes=-30"), 10), Part(0..10));
        assert_eq!(byte_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(byte_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(byte_range(Some("bytes=0-"), 0), Unsatisfiable);
        // Not served as a range: the whole file instead.
        assert_eq!(byte_range(Some("bytes=5-2"), 10), Whole);
        assert_eq!(byte_range(Some("bytes=0-1,4-5"), 10), Whole);
        assert_eq!(byte_range(Some("items=0-1"), 10), Whole);
        assert_eq!(byte_range(Some("bytes=x-"), 10), Whole);
    }

    #[tokio::test]
    async fn a_folder_keeps_packages_whole_and_serves_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::folder(&dir.path().join("packages")).unwrap();
        assert_eq!(a.get("ab").await.unwrap(), None);
        assert_eq!(a.size("ab").await.unwrap(), None);
        a.put("ab", b"0123456789".to_vec()).await.unwrap();
        assert!(dir.path().join("packages/ab.pkg").is_file(), "a plain file in the folder");
        assert_eq!(a.size("ab").await.unwrap(), Some(10));
        assert_eq!(a.get("ab").await.unwrap().as_deref(), Some(&b"0123456789"[..]));
        assert_eq!(&a.get_range("ab", 3..6).await.unwrap()[..], b"345");
        assert!(Artifacts::open("file://relative", &[]).is_err());
        assert!(Artifacts::open("ftp://x", &[]).is_err());
        assert!(Artifacts::open("s3://", &[]).is_err());
        let unknown = [("no_such_key".to_string(), "1".to_string())];
        assert!(Artifacts::open("s3://bucket", &unknown).is_err(), "an unknown option is refused");
    }
}
