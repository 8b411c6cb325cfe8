//! Over-the-air model updates: the download half. The hub's retained `desired` message names a
//! package by its SHA-256; this fetches it from the hub's API into `downloads/{sha256}.part`,
//! resuming with an HTTP range request after any interruption (link drop, agent restart), and
//! hands over the bytes only when their size and SHA-256 match. Verification (signature,
//! release, expiry, target, self-test) and the switch happen in [`crate::store`].

use base64::Engine;
use std::path::{Path, PathBuf};
use std::time::Duration;

use impeller_core::deploy::PackageRef;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("downloaded {got} bytes, the desired state says {want}")]
    Size { got: u64, want: u64 },
    #[error("the downloaded package's SHA-256 is {got}, the desired state says {want}")]
    Hash { got: String, want: String },
    #[error("package of {size} bytes is over this device's limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
}

impl DownloadError {
    /// Worth trying again later (the link), as opposed to a package that is wrong.
    pub fn is_transient(&self) -> bool {
        matches!(self, DownloadError::Http { .. } | DownloadError::Io { .. })
    }
}

/// Fetches packages from the hub's API with the device's credentials. The HTTP client is made
/// per download and dropped after it: updates are rare, and an idle agent stays small.
#[derive(Debug, Clone)]
pub struct Downloader {
    api: String,
    username: String,
    password: String,
    dir: PathBuf,
    max_bytes: u64,
    /// For an `https://` API (`crate::tls`).
    tls: Option<ureq::tls::TlsConfig>,
}

impl Downloader {
    pub fn new(api: &str, username: &str, password: &str, dir: &Path, max_bytes: u64) -> Self {
        Self {
            api: api.trim_end_matches('/').to_string(),
            username: username.to_string(),
            password: password.to_string(),
            dir: dir.to_path_buf(),
            max_bytes,
            tls: None,
        }
    }

    /// Trusts the hub's certificate as `tls` says (needed for an `https://` API).
    pub fn with_tls(self, tls: ureq::tls::TlsConfig) -> Self {
        Self { tls: Some(tls), ..self }
    }

    pub fn part_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.part"))
    }

    /// Downloads (or finishes downloading) the package and returns its verified bytes.
    /// Blocking: run it on a blocking thread.
    pub fn fetch(&self, pkg: &PackageRef) -> Result<Vec<u8>, DownloadError> {
        if pkg.size > self.max_bytes {
            return Err(DownloadError::TooLarge { size: pkg.size, limit: self.max_bytes });
        }
        let path = self.part_path(&pkg.sha256);
        let io = |source| DownloadError::Io { path: path.clone(), source };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let mut have = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if have > pkg.size {
            have = 0;
        }
        if have < pkg.size {
            self.get_from(pkg, &path, have)?;
        }
        let bytes = std::fs::read(&path).map_err(io)?;
        let check = if bytes.len() as u64 != pkg.size {
            Err(DownloadError::Size { got: bytes.len() as u64, want: pkg.size })
        } else {
            let got = impeller_core::hex::encode(&Sha256::digest(&bytes));
            if got == pkg.sha256 { Ok(()) } else { Err(DownloadError::Hash { got, want: pkg.sha256.clone() }) }
        };
        if let Err(e) = check {
            // Whatever is on disk is wrong: the next attempt starts from the first byte.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(bytes)
    }

    /// GET from byte `offset` on, appended to the part file.
    fn get_from(&self, pkg: &PackageRef, path: &Path, offset: u64) -> Result<(), DownloadError> {
        let url = format!("{}{}", self.api, pkg.content_path());
        let http = |message: String| DownloadError::Http { url: url.clone(), message };
        let io = |source| DownloadError::Io { path: path.to_path_buf(), source };
        // The body may take long on a slow link, but not forever: at least 1 kB/s.
        let body_time = Duration::from_secs(60 + (pkg.size - offset) / 1000);
        let mut config = ureq::Agent::config_builder();
        match &self.tls {
            Some(tls) => config = config.tls_config(tls.clone()),
            None if url.starts_with("https://") => return Err(http("https needs the hub's CA (hub.ca_cert)".into())),
            None => {}
        }
        let agent: ureq::Agent = config
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .timeout_recv_body(Some(body_time))
            .http_status_as_error(false)
            .build()
            .into();
        let credentials = format!("{}:{}", self.username, self.password);
        let mut req = agent.get(&url).header(
            "authorization",
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials)),
        );
        if offset > 0 {
            req = req.header("range", format!("bytes={offset}-"));
        }
        let mut resp = req.call().map_err(|e| http(e.to_string()))?;
        let status = resp.status().as_u16();
        let mut file = match status {
            206 => {
                tracing::info!(sha256 = %pkg.sha256, offset, "resuming a package download");
                std::fs::OpenOptions::new().append(true).open(path).map_err(io)?
            }
            // A server that ignores ranges sends it all: start over.
            200 => std::fs::File::create(path).map_err(io)?,
            _ => {
                let body = resp.body_mut().with_config().limit(4096).read_to_string().unwrap_or_default();
                let detail = body.chars().take(300).collect::<String>();
                return Err(http(format!("HTTP {status}: {detail}")));
            }
        };
        let already = if status == 206 { offset } else { 0 };
        // One byte over the expected size is enough to know the server sends too much.
        let mut body = resp.body_mut().with_config().limit(pkg.size - already + 1).reader();
        let copied = std::io::copy(&mut body, &mut file).map_err(|e| http(e.to_string()))?;
        file.sync_data().map_err(io)?;
        if already + copied > pkg.size {
            return Err(DownloadError::Size { got: already + copied, want: pkg.size });
        }
        Ok(())
    }

    /// Removes part files of packages other than `keep`.
    pub fn clean(&self, keep: Option<&str>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".part") && keep.is_none_or(|k| !name.starts_with(k)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
