//! The live event stream (`GET /api/v1/events`) against a running hub: it needs a token, says
//! hello, tells of each audited change (here a device added through the API) and of messages the
//! hub stored (a device publishing over MQTT), and resumes after `Last-Event-ID`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{api_hub, device_session, plain_device};

/// One server-sent event: its name, id and data.
#[derive(Debug)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

struct Stream {
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    async fn open(base: &str, token: &str, last_id: Option<u64>) -> Stream {
        let mut req = reqwest::Client::new().get(format!("{base}/api/v1/events")).bearer_auth(token);
        if let Some(id) = last_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Stream { resp, buf: String::new() }
    }

    /// The next event (comments skipped), or `None` after `within`.
    async fn next(&mut self, within: Duration) -> Option<Sse> {
        let until = Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
                for line in block.lines() {
                    match line.split_once(':').map(|(k, v)| (k, v.strip_prefix(' ').unwrap_or(v))) {
                        Some(("event", v)) => event = v.to_string(),
                        Some(("id", v)) => id = Some(v.to_string()),
                        Some(("data", v)) => data += v,
                        _ => {}
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(Sse { event, id, data: serde_json::from_str(&data).unwrap() });
            }
            let left = until.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf += &String::from_utf8_lossy(&bytes),
                Ok(other) => panic!("the stream ended: {other:?}"),
                Err(_) => return None,
            }
        }
    }

    /// Reads until an event named `name` matching `want`.
    async fn until(&mut self, name: &str, want: impl Fn(&Value) -> bool) -> Sse {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let left = until.checked_duration_since(Instant::now()).unwrap_or_default();
            let Some(e) = self.next(left).await else { panic!("no `{name}` event within 10 s") };
            if e.event == name && want(&e.data) {
                return e;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_tells_of_audited_changes_and_stored_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, token, _) = api_hub(dir.path(), |_| {}).await;
    let base = format!("http://{}", hub.http_addr.unwrap());

    let anonymous = reqwest::get(format!("{base}/api/v1/events")).await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    let mut stream = Stream::open(&base, &token, None).await;
    let hello = stream.next(Duration::from_secs(5)).await.expect("a hello event");
    assert_eq!(hello.event, "hello");
    let head = hello.data["audit_seq"].as_u64().unwrap();

    // An audited change through the API, and nothing before it: the stream starts at the head.
    let add = reqwest::Client::new()
        .post(format!("{base}/api/v1/devices"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(json!({"id": "pump-live", "tags": {"site": "north"}, "profile": "gw"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(add.status().as_u16(), 201);
    let added = stream.until("audit", |d| d["action"] == "device.added").await;
    assert_eq!(added.data["subject"], "pump-live");
    let seq = added.data["seq"].as_u64().unwrap();
    assert!(seq > head, "an event for a record older than the stream: {seq} <= {head}");
    assert_eq!(added.id.as_deref(), Some(seq.to_string().as_str()));

    // A device's messages over MQTT: the stream counts what was stored.
    let port = hub.mqtt_addr.unwrap().port();
    let acks = device_session(plain_device("127.0.0.1", port), "pump-live", 20).await;
    assert_eq!(acks.last(), Some(&20));
    let mut seen = 0;
    while seen < 20 {
        let e = stream.until("ingest", |_| true).await;
        seen += e.data["new"].as_u64().unwrap();
        assert_eq!(e.data["stored"].as_u64(), Some(seen), "{:?}", e.data);
    }

    // A reader that reconnects after the record before gets that record again.
    let mut resumed = Stream::open(&base, &token, Some(seq - 1)).await;
    assert_eq!(resumed.next(Duration::from_secs(5)).await.unwrap().event, "hello");
    let again = resumed.until("audit", |_| true).await;
    assert_eq!(again.data["seq"].as_u64(), Some(seq));
}
