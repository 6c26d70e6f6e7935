//! Draining on shutdown without dropping requests on keep-alive connections.
//!
//! Closing an idle keep-alive connection races with a client that is sending its next
//! request on it: the client gets a TCP close instead of an answer and cannot tell whether
//! the request was done. So shutdown first drains: every response carries
//! `Connection: close` (the client opens a new connection for its next request, and knows
//! this one is finished), `/ready` turns 503 so load balancers stop routing here, and only
//! once no request has been running for a quiet interval are the remaining idle
//! connections closed.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Shared by the middleware (which counts requests) and the shutdown sequence.
#[derive(Debug, Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    draining: CancellationToken,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when a request last started or finished.
    last_activity_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            inner: Arc::new(Inner {
                draining: CancellationToken::new(),
                in_flight: AtomicUsize::new(0),
                last_activity_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    /// Starts draining: from now on every response closes its connection.
    pub fn start(&self) {
        self.inner.draining.cancel();
    }

    fn touch(&self) {
        let now = self.inner.epoch.elapsed().as_millis() as u64;
        self.inner.last_activity_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.inner.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(
            now.saturating_sub(self.inner.last_activity_ms.load(Ordering::Relaxed)),
        )
    }

    /// Waits until no request has run for `quiet`, or `limit` has passed.
    pub async fn wait_until_quiet(&self, quiet: Duration, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        // Clients that sent a request just before the signal get to see it answered.
        self.touch();
        loop {
            if self.inner.in_flight.load(Ordering::Relaxed) == 0 && self.idle_for() >= quiet {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10).min(quiet)).await;
        }
    }
}

/// Decrements the in-flight count even when the request's future is dropped.
struct InFlight<'a>(&'a Drain);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Middleware: counts running requests and, while draining, closes each connection after
/// its response.
pub async fn track(State(drain): State<Drain>, request: Request, next: Next) -> Response {
    drain.inner.in_flight.fetch_add(1, Ordering::Relaxed);
    drain.touch();
    let _in_flight = InFlight(&drain);
    let mut response = next.run(request).await;
    if drain.is_draining() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_for_quiet_ends_once_requests_stop() {
        let drain = Drain::default();
        drain.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        let waiting = {
            let drain = drain.clone();
            tokio::spawn(async move {
                drain
                    .wait_until_quiet(Duration::from_millis(20), Duration::from_secs(3600))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "a running request keeps it waiting");
        drop(InFlight(&drain));
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("quiet soon after the last request")
            .expect("no panic");
    }
}
