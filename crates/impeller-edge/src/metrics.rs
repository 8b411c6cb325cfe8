//! Prometheus metrics over a tiny HTTP endpoint (`GET /metrics`), hand-written to keep the
//! agent small: no HTTP framework in the edge binary.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::outbox::Class;

#[derive(Debug, Default)]
pub struct Metrics {
    pub readings: AtomicU64,
    pub readings_invalid: AtomicU64,
    pub source_errors: AtomicU64,
    pub frames: AtomicU64,
    pub scored: AtomicU64,
    pub alarms: AtomicU64,
    pub alerts: AtomicU64,
    pub sent: AtomicU64,
    pub acked_seq: AtomicU64,
    pub hub_connected: AtomicBool,
    pub last_hub_contact_ms: AtomicI64,
    pub outbox_bytes: AtomicU64,
    pub outbox_pending: AtomicU64,
    pub outbox_oldest_ms: AtomicI64,
    pub outbox_refused: [AtomicU64; 5],
    pub outbox_evicted: [AtomicU64; 5],
    pub model_release: AtomicU64,
    pub installs: AtomicU64,
    pub installs_refused: AtomicU64,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Metrics {
    pub fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(a: &AtomicU64, v: u64) {
        a.store(v, Ordering::Relaxed);
    }

    pub fn render(&self, now_ms: i64) -> String {
        let mut s = String::new();
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            s.push_str(&format!(
                "# HELP impeller_edge_{name} {help}\n# TYPE impeller_edge_{name} {kind}\nimpeller_edge_{name} {value}\n"
            ));
        };
        line("readings_total", "counter", "Readings received from the source.", get(&self.readings).to_string());
        line(
            "readings_invalid_total",
            "counter",
            "Readings messages refused as malformed (an array with a bad reading is refused whole).",
            get(&self.readings_invalid).to_string(),
        );
        line(
            "source_errors_total",
            "counter",
            "Source failures: controller unreachable, reads refused, malformed responses.",
            get(&self.source_errors).to_string(),
        );
        line("frames_total", "counter", "Frames given to the model.", get(&self.frames).to_string());
        line("scores_total", "counter", "Frames scored.", get(&self.scored).to_string());
        line("alarm_frames_total", "counter", "Scored frames in alarm.", get(&self.alarms).to_string());
        line("alerts_total", "counter", "Alerts raised.", get(&self.alerts).to_string());
        line(
            "uplink_sent_total",
            "counter",
            "Messages published to the hub (with resends).",
            get(&self.sent).to_string(),
        );
        line("acked_seq", "gauge", "Highest sequence number the hub acknowledged.", get(&self.acked_seq).to_string());
        line(
            "hub_connected",
            "gauge",
            "1 when connected to the hub's broker.",
            u8::from(self.hub_connected.load(Ordering::Relaxed)).to_string(),
        );
        let contact = self.last_hub_contact_ms.load(Ordering::Relaxed);
        let age = if contact > 0 { ((now_ms - contact) as f64 / 1000.0).to_string() } else { "NaN".into() };
        line("last_hub_contact_age_seconds", "gauge", "Seconds since the hub last acknowledged anything.", age);
        line("outbox_bytes", "gauge", "Bytes of outbox segments on disk.", get(&self.outbox_bytes).to_string());
        line(
            "outbox_pending_records",
            "gauge",
            "Records not yet acknowledged by the hub.",
            get(&self.outbox_pending).to_string(),
        );
        let oldest = self.outbox_oldest_ms.load(Ordering::Relaxed);
        let age = if oldest > 0 { ((now_ms - oldest) as f64 / 1000.0).max(0.0).to_string() } else { "0".into() };
        line("outbox_oldest_pending_age_seconds", "gauge", "Age of the oldest unacknowledged record.", age);
        line("model_release", "gauge", "Release of the active model (0: none).", get(&self.model_release).to_string());
        line("model_installs_total", "counter", "Models installed.", get(&self.installs).to_string());
        line("model_installs_refused_total", "counter", "Packages refused.", get(&self.installs_refused).to_string());
        for (name, arr, help) in [
            ("outbox_refused_total", &self.outbox_refused, "Records refused because higher classes filled the quota."),
            ("outbox_evicted_total", &self.outbox_evicted, "Records evicted to make room for higher classes."),
        ] {
            s.push_str(&format!("# HELP impeller_edge_{name} {help}\n# TYPE impeller_edge_{name} counter\n"));
            for c in Class::ALL {
                s.push_str(&format!("impeller_edge_{name}{{class=\"{}\"}} {}\n", c.as_str(), get(&arr[c as usize])));
            }
        }
        s
    }
}

/// Serves `GET /metrics` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let ok = buf[..n].starts_with(b"GET /metrics ") || buf[..n].starts_with(b"GET /metrics?");
            let (status, body) = if ok {
                ("200 OK", metrics.render(crate::now_ms()))
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        });
    }
}
