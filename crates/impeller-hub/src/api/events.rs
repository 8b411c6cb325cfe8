//! `GET /api/v1/events`: server-sent events, so that a page (the dashboard) reloads its data when
//! something changed instead of polling every view. Each second the stream looks at what is new:
//! audit records, which every change of what the fleet runs or who may act appends (also those
//! another hub on the same database made), and messages this hub stored. A reader that
//! reconnects with `Last-Event-ID` (the last audit record it saw) gets what it missed, up to the
//! newest 1000 records.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;

use super::{ApiResult, ApiState, operator};
use crate::auth::Role;
use crate::ingest::IngestStats;
use crate::store::{AuditFilter, AuditStore, Store};

const POLL: Duration = Duration::from_secs(1);
/// Audit records sent per poll; a reader far behind catches up over several seconds.
const BATCH: usize = 100;
/// How far back `Last-Event-ID` may reach.
const REPLAY: u64 = 1000;

struct Watch {
    store: Store,
    stats: Arc<IngestStats>,
    /// The newest audit record sent.
    audit: u64,
    /// Messages stored when the reader last heard.
    stored: u64,
    pending: VecDeque<Event>,
}

impl Watch {
    async fn poll(&mut self) {
        let filter = AuditFilter { after: self.audit, limit: BATCH, ..Default::default() };
        match self.store.audit_records(&filter).await {
            Ok(records) => {
                for r in records {
                    self.audit = r.seq;
                    let data = json!({"seq": r.seq, "time_ms": r.time_ms, "actor": r.actor, "action": r.action, "subject": r.subject});
                    self.pending
                        .push_back(Event::default().event("audit").id(r.seq.to_string()).data(data.to_string()));
                }
            }
            // The next poll tries again; the reader only hears later.
            Err(error) => tracing::warn!(%error, "events: cannot read the audit trail"),
        }
        let stored = self.stats.stored.load(Ordering::Relaxed);
        if stored != self.stored {
            let data = json!({"stored": stored, "new": stored.saturating_sub(self.stored)});
            self.pending.push_back(Event::default().event("ingest").data(data.to_string()));
            self.stored = stored;
        }
    }
}

pub async fn events(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    operator(&s, &headers, Role::Read).await?;
    let head = s.store.audit_head().await?;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let audit = match resume {
        Some(seen) => seen.clamp(head.saturating_sub(REPLAY), head),
        None => head,
    };
    let stored = s.stats.stored.load(Ordering::Relaxed);
    // The first event says where the stream starts, so the reader knows it is connected.
    let hello = json!({"audit_seq": head, "stored": stored});
    let pending = VecDeque::from([Event::default().event("hello").data(hello.to_string())]);
    let watch = Watch { store: s.store.clone(), stats: s.stats.clone(), audit, stored, pending };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        loop {
            if let Some(event) = w.pending.pop_front() {
                return Some((Ok(event), w));
            }
            tokio::time::sleep(POLL).await;
            w.poll().await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
