//! Package files in the artifact store: a folder (the default) and an S3 bucket (moto's S3
//! server from PyPI stands in for AWS). Uploaded through the API, the file lands in the store,
//! and the content endpoint serves it whole, by ranges (a device resuming a download), with
//! If-Range, and refuses a range past its end.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use impeller_core::package::build;
use impeller_core::{Channel, Frame, TrainConfig, detector::DetectorConfig, detector::PcaConfig, train};
use serde_json::Value;

use crate::{api_hub, free_port};

/// A small signed package.
fn package(signer: &impeller_core::package::Signer25519) -> Vec<u8> {
    let channels = [Channel::new("flow", "m3/h"), Channel::new("pressure", "bar")];
    let frames: Vec<Frame> = (0..600)
        .map(|i| {
            let x = (i as f64 / 30.0).sin();
            Frame { ts_ms: 1000 * i as i64, values: vec![10.0 + x, 5.0 + 0.3 * x + 0.01 * (i % 7) as f64] }
        })
        .collect();
    let model = train(&channels, &frames, &TrainConfig::new(DetectorConfig::Pca(PcaConfig::default()))).unwrap();
    let spec = crate::package_spec("pumps", 1);
    build(&model, &frames, &spec, signer).unwrap()
}

/// Uploads `bytes` and checks what the content endpoint serves; the package's hash.
async fn upload_and_read_back(base: &str, token: &str, bytes: &[u8]) -> String {
    let client = reqwest::Client::new();
    let resp =
        client.post(format!("{base}/api/v1/packages")).bearer_auth(token).body(bytes.to_vec()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let stored: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let sha = stored["sha256"].as_str().unwrap().to_string();
    let url = format!("{base}/api/v1/packages/{sha}/content");
    let get = |range: Option<&str>, if_range: Option<&str>| {
        let mut req = client.get(&url).bearer_auth(token);
        if let Some(r) = range {
            req = req.header("range", r);
        }
        if let Some(r) = if_range {
            req = req.header("if-range", r);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            (status, headers, resp.bytes().await.unwrap().to_vec())
        }
    };
    let (status, headers, whole) = get(None, None).await;
    assert_eq!(status, 200);
    assert_eq!(whole, bytes, "the whole package back");
    assert_eq!(headers["etag"], format!("\"{sha}\"").as_str());
    assert_eq!(headers["accept-ranges"], "bytes");

    let n = bytes.len();
    let (status, headers, tail) = get(Some("bytes=100-"), None).await;
    assert_eq!(status, 206);
    assert_eq!(tail, &bytes[100..]);
    assert_eq!(headers["content-range"], format!("bytes 100-{}/{n}", n - 1).as_str());
    let (status, _, middle) = get(Some("bytes=10-19"), Some(&format!("\"{sha}\""))).await;
    assert_eq!((status, middle.as_slice()), (206, &bytes[10..20]), "If-Range with the current tag");
    let (status, _, all) = get(Some("bytes=10-19"), Some("\"another\"")).await;
    assert_eq!((status, all.len()), (200, n), "If-Range with another tag: the whole file");
    let (status, _, last) = get(Some("bytes=-5"), None).await;
    assert_eq!((status, last.as_slice()), (206, &bytes[n - 5..]));
    let (status, headers, _) = get(Some(&format!("bytes={n}-")), None).await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], format!("bytes */{n}").as_str());
    sha
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_in_the_data_folder_are_served_whole_and_by_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, token, signer) = api_hub(dir.path(), |_| {}).await;
    let bytes = package(&signer);
    let sha = upload_and_read_back(&format!("http://{}", hub.http_addr.unwrap()), &token, &bytes).await;
    assert_eq!(std::fs::read(dir.path().join("packages").join(format!("{sha}.pkg"))).unwrap(), bytes);
}

/// moto's S3 server on a free port, stopped when dropped.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto(port: u16) -> Result<Moto, String> {
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("`moto_server` cannot start ({e}): pip install -r crates/impeller-hub/tests/peers/requirements.txt")
        })?;
    let moto = Moto(child);
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > until {
            return Err("moto_server did not listen within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(moto)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_in_an_s3_bucket_are_served_whole_and_by_ranges() {
    let port = free_port();
    let _moto = match moto(port) {
        Ok(m) => m,
        Err(why) => {
            crate::skip_without_peer("packages_in_an_s3_bucket_are_served_whole_and_by_ranges", &why);
            return;
        }
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    // moto keeps buckets in memory and takes unsigned requests.
    let made = reqwest::Client::new().put(format!("{endpoint}/impeller")).send().await.unwrap();
    assert!(made.status().is_success(), "creating the bucket: {}", made.status());

    let dir = tempfile::tempdir().unwrap();
    let options = [
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
    ];
    let (hub, token, signer) = api_hub(dir.path(), |c| {
        c.artifacts = Some("s3://impeller/hub-a".into());
        c.artifact_options = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    })
    .await;
    let bytes = package(&signer);
    let sha = upload_and_read_back(&format!("http://{}", hub.http_addr.unwrap()), &token, &bytes).await;
    // In the bucket under the prefix, as boto3 (a third-party S3 client) reads it back.
    let script = "import boto3, hashlib, sys\n\
s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n\
body = s3.get_object(Bucket='impeller', Key=sys.argv[2])['Body'].read()\n\
print(hashlib.sha256(body).hexdigest())";
    let out = Command::new("python3").args(["-c", script, &endpoint, &format!("hub-a/{sha}.pkg")]).output().unwrap();
    assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sha, "the object is the package");
    assert!(!dir.path().join("packages").join(format!("{sha}.pkg")).exists());
}
