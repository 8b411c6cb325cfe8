use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn impeller(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_impeller")).args(args).output().expect("run impeller")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The SKAB folder: IMPELLER_SKAB_DIR, or the shared copy beside the repository. `None` (with
/// a message saying the test skipped) when absent, unless IMPELLER_REQUIRE_SKAB is set (CI),
/// in which case absence fails the test.
pub fn skab_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("IMPELLER_SKAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/skab"));
    if dir.join("valve1").is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("IMPELLER_REQUIRE_SKAB").is_none(),
        "{test}: IMPELLER_REQUIRE_SKAB is set but no SKAB data at {}",
        dir.display()
    );
    eprintln!("{test}: SKIPPED, no SKAB data at {} (set IMPELLER_SKAB_DIR)", dir.display());
    None
}

/// A SKAB-layout CSV with `n` rows: normal, then a pressure drop from row `anomaly_from`.
pub fn skab_csv(n: usize, anomaly_from: usize) -> String {
    let mut s = String::from(
        "datetime;Accelerometer1RMS;Accelerometer2RMS;Current;Pressure;Temperature;Thermocouple;Voltage;Volume Flow RateRMS;anomaly;changepoint\r\n",
    );
    let mut state = 12345u64;
    let mut noise = || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    for i in 0..n {
        let t = 1_583_748_873 + i as i64;
        let (h, m, sec) = ((t / 3600) % 24, (t / 60) % 60, t % 60);
        let load = (i as f64 / 30.0).sin();
        let flow = 32.0 + 2.0 * load + 0.2 * noise();
        let anomalous = i >= anomaly_from;
        let pressure = 0.05 * flow + 0.01 * noise() - if anomalous { 0.3 } else { 0.0 };
        let a = u8::from(anomalous);
        s.push_str(&format!(
            "2020-03-09 {h:02}:{m:02}:{sec:02};{:.6};{:.6};{:.5};{pressure:.6};{:.4};{:.4};{:.3};{flow:.3};{a}.0;0.0\r\n",
            0.026 + 0.001 * noise(),
            0.040 + 0.001 * noise(),
            1.3 + 0.02 * flow + 0.01 * noise(),
            79.0 + 0.1 * noise(),
            26.0 + 0.05 * noise(),
            230.0 + 2.0 * noise(),
        ));
    }
    s
}

/// Stops a spawned process (a hub) however the test ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `impeller hub` as its own process on free ports, with `args` added, stopped when dropped.
pub struct TestHub {
    pub url: String,
    _process: KillOnDrop,
}

impl TestHub {
    pub fn start(data: &Path, args: &[&str]) -> TestHub {
        let http = free_port();
        let process = Command::new(env!("CARGO_BIN_EXE_impeller"))
            .args(["hub", "--data-dir", data.to_str().unwrap(), "--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let process = KillOnDrop(process);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
            assert!(std::time::Instant::now() < until, "the hub's API did not listen");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        TestHub { url: format!("http://127.0.0.1:{http}"), _process: process }
    }

    /// `impeller ARGS` against this hub with `token`.
    pub fn run(&self, args: &[&str], token: &str) -> Output {
        Command::new(env!("CARGO_BIN_EXE_impeller"))
            .args(args)
            .env("IMPELLER_HUB", &self.url)
            .env("IMPELLER_TOKEN", token)
            .output()
            .unwrap()
    }
}

/// A new API token with `role`, made on the hub's database in `data`.
pub fn token(data: &Path, role: &str) -> String {
    let out = impeller(&["token", "create", role, "--role", role, "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}
