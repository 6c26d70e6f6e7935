//! Keeps an embedded cluster running: [`SupervisedPostgres`] watches the postmaster and starts
//! it again when it dies (kill -9, the OOM killer), with bounded exponential backoff.
//!
//! PostgreSQL's crash recovery replays the WAL on the restart, so nothing committed is lost;
//! connection settings stay valid (same socket, same port), so pools reconnect by themselves.
//!
//! What it reports ([`ClusterHealth`]) answers two questions. *Is the database up right now?*
//! ([`ClusterHealth::is_running`], for readiness.) *Is the process worth keeping?*
//! ([`ClusterHealth::is_healthy`], for liveness): yes while the cluster runs or is being
//! brought back; no once [`RestartPolicy::unhealthy_after_restarts`] restarts in a row did not
//! give a cluster that stays up, so that a process supervisor replaces the process. The
//! supervisor keeps trying meanwhile (at the longest backoff), and reports healthy again if a
//! restart succeeds.

use std::panic::AssertUnwindSafe;
use std::process::ExitStatus;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::Config;
use tokio_util::sync::CancellationToken;

use crate::{connection_url, EmbeddedError, EmbeddedPostgres, SUPERUSER};

/// How the supervisor restarts a dead cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// How often the postmaster is checked on (a non-blocking `waitpid`).
    pub check_interval: Duration,
    /// Wait before the second restart in a row; each further one waits twice as long. The
    /// first restart after a healthy period happens at once.
    pub initial_backoff: Duration,
    /// The longest wait between two restarts.
    pub max_backoff: Duration,
    /// A cluster that stays up this long is healthy again: the next crash restarts at once.
    pub healthy_after: Duration,
    /// Restarts in a row (without a healthy period between them) after which a cluster that
    /// is down makes the process unhealthy.
    pub unhealthy_after_restarts: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            check_interval: Duration::from_millis(100),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            unhealthy_after_restarts: 5,
        }
    }
}

impl RestartPolicy {
    /// The wait before restart number `attempt` (1-based) of a series without a healthy
    /// period: none for the first, then `initial_backoff` doubling up to `max_backoff`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        match attempt {
            0 | 1 => Duration::ZERO,
            n => {
                let factor = 1u32.checked_shl(n - 2).unwrap_or(u32::MAX);
                self.initial_backoff
                    .checked_mul(factor)
                    .unwrap_or(self.max_backoff)
                    .min(self.max_backoff)
            }
        }
    }
}

/// Where the cluster stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// The server accepts connections.
    Running,
    /// The server died and is being started again.
    Restarting,
    /// The server is down and restarts keep failing (or keep dying); still retried.
    Failing,
    /// Stopped on purpose (shutdown).
    Stopped,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Running => "running",
            ClusterState::Restarting => "restarting",
            ClusterState::Failing => "failing",
            ClusterState::Stopped => "stopped",
        }
    }
}

/// What the supervisor last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHealth {
    pub state: ClusterState,
    /// The postmaster's pid while it runs.
    pub pid: Option<u32>,
    /// Successful restarts since the supervisor started.
    pub restarts: u64,
    /// Restarts tried since the cluster last stayed up for `healthy_after`.
    pub restarts_in_a_row: u32,
    /// Why the cluster last went down or last failed to start.
    pub last_error: Option<String>,
}

impl ClusterHealth {
    /// Whether the server accepts connections now.
    pub fn is_running(&self) -> bool {
        self.state == ClusterState::Running
    }

    /// Whether a process running this cluster is worth keeping: false only while restarts
    /// keep failing.
    pub fn is_healthy(&self) -> bool {
        self.state != ClusterState::Failing
    }

    /// One sentence for operators, saying what is wrong and what happens next.
    pub fn describe(&self) -> String {
        let last = self
            .last_error
            .as_deref()
            .map(|error| format!("; last error: {error}"))
            .unwrap_or_default();
        match self.state {
            ClusterState::Running => format!(
                "the embedded PostgreSQL is running (pid {}, {} restarts)",
                self.pid.map_or_else(|| "?".into(), |pid| pid.to_string()),
                self.restarts
            ),
            ClusterState::Restarting => format!(
                "the embedded PostgreSQL is down and being restarted (attempt {}){last}",
                self.restarts_in_a_row
            ),
            ClusterState::Failing => format!(
                "the embedded PostgreSQL is down and {} restarts in a row did not bring it back \
                 for good; still retrying, but this process should be replaced: see the \
                 PostgreSQL log in the data directory{last}",
                self.restarts_in_a_row
            ),
            ClusterState::Stopped => "the embedded PostgreSQL was stopped".into(),
        }
    }
}

/// An embedded cluster under supervision. [`stop`](Self::stop) shuts it down; dropping
/// this asks the supervisor to shut it down.
#[derive(Debug)]
pub struct SupervisedPostgres {
    health: watch::Receiver<ClusterHealth>,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), EmbeddedError>>>,
    /// Connection settings of the superuser; the same across restarts.
    config: Config,
}

impl SupervisedPostgres {
    /// Takes over `server` (started with [`EmbeddedPostgres::start`]) and watches it from a
    /// task on the current runtime.
    pub fn spawn(server: EmbeddedPostgres, policy: RestartPolicy) -> SupervisedPostgres {
        let initial = ClusterHealth {
            state: if server.pid().is_some() {
                ClusterState::Running
            } else {
                ClusterState::Restarting
            },
            pid: server.pid(),
            restarts: 0,
            restarts_in_a_row: 0,
            last_error: None,
        };
        metrics::gauge!("tidemark_embedded_postgres_up")
            .set(f64::from(u8::from(initial.is_running())));
        let (publish, health) = watch::channel(initial);
        let config = server.connection_config(SUPERUSER);
        let stop = CancellationToken::new();
        let supervisor = Supervisor {
            server,
            policy,
            publish,
            up_since: Instant::now(),
        };
        let task = tokio::spawn(supervisor.run(stop.clone()));
        SupervisedPostgres {
            health,
            stop,
            task: Some(task),
            config,
        }
    }

    /// The latest report.
    pub fn health(&self) -> ClusterHealth {
        self.health.borrow().clone()
    }

    /// Follows the reports (for handlers that answer health checks).
    pub fn subscribe(&self) -> watch::Receiver<ClusterHealth> {
        self.health.clone()
    }

    /// Connection settings for database `dbname`; valid across restarts.
    pub fn connection_config(&self, dbname: &str) -> Config {
        let mut config = self.config.clone();
        config.dbname(dbname);
        config
    }

    /// A `postgresql://` URL for database `dbname`.
    pub fn url(&self, dbname: &str) -> String {
        connection_url(&self.connection_config(dbname))
    }

    /// Stops supervising and shuts the server down (see [`EmbeddedPostgres::stop`]). A
    /// restart in progress finishes first, so no server is left behind.
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|join| {
                Err(EmbeddedError::Io {
                    action: "stop the embedded PostgreSQL supervisor".into(),
                    source: std::io::Error::other(join.to_string()),
                })
            }),
            None => Ok(()),
        }
    }
}

impl Drop for SupervisedPostgres {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Supervisor {
    server: EmbeddedPostgres,
    policy: RestartPolicy,
    publish: watch::Sender<ClusterHealth>,
    /// When the server last came up.
    up_since: Instant,
}

/// What one step of the supervisor decided.
enum Next {
    Continue,
    Stop,
}

impl Supervisor {
    async fn run(mut self, stop: CancellationToken) -> Result<(), EmbeddedError> {
        loop {
            // A panic here must not drop the server (that would shut it down) nor end
            // supervision: the server lives outside the step, and the step runs again.
            match AssertUnwindSafe(self.step(&stop)).catch_unwind().await {
                Ok(Next::Continue) => {}
                Ok(Next::Stop) => break,
                Err(panic) => {
                    metrics::counter!("tidemark_embedded_supervisor_panics_total").increment(1);
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a non-text panic".into());
                    tracing::error!(%message, "the embedded PostgreSQL supervisor panicked; it goes on");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(self.policy.check_interval) => {}
                    }
                }
            }
        }
        let result = self.server.stop_in_place().await;
        self.update(|health| {
            health.state = ClusterState::Stopped;
            health.pid = None;
        });
        result
    }

    /// Watches a running server until it exits, or brings a dead one back (one attempt).
    async fn step(&mut self, stop: &CancellationToken) -> Next {
        if self.server.pid().is_some() {
            self.watch(stop).await
        } else {
            self.restart(stop).await
        }
    }

    async fn watch(&mut self, stop: &CancellationToken) -> Next {
        loop {
            if stop.is_cancelled() {
                return Next::Stop;
            }
            match self.server.exited() {
                Ok(Some(status)) => {
                    self.went_down(status);
                    return Next::Continue;
                }
                Ok(None) => {}
                Err(error) => {
                    // Not knowing is no reason to restart a server that may be fine.
                    tracing::warn!(%error, "could not check on the embedded PostgreSQL");
                }
            }
            let in_a_row = self.publish.borrow().restarts_in_a_row;
            if in_a_row > 0 && self.up_since.elapsed() >= self.policy.healthy_after {
                tracing::info!(
                    after = ?self.policy.healthy_after,
                    "the embedded PostgreSQL stayed up; the next crash restarts it at once"
                );
                self.update(|health| {
                    health.restarts_in_a_row = 0;
                    health.last_error = None;
                });
            }
            tokio::select! {
                _ = stop.cancelled() => return Next::Stop,
                _ = tokio::time::sleep(self.policy.check_interval) => {}
            }
        }
    }

    fn went_down(&mut self, status: ExitStatus) {
        metrics::counter!("tidemark_embedded_postgres_exits_total").increment(1);
        metrics::gauge!("tidemark_embedded_postgres_up").set(0.0);
        let reason = format!("the server exited unexpectedly with {status}");
        tracing::error!(
            %status,
            data_dir = %self.server.data_dir().display(),
            log_file = %self.server.log_file().display(),
            "the embedded PostgreSQL died; restarting it (crash recovery replays its WAL)"
        );
        let policy = self.policy.clone();
        self.update(|health| {
            health.pid = None;
            health.last_error = Some(reason);
            health.state = down_state(&policy, health.restarts_in_a_row);
        });
    }

    async fn restart(&mut self, stop: &CancellationToken) -> Next {
        let attempt = self.publish.borrow().restarts_in_a_row.saturating_add(1);
        let delay = self.policy.backoff(attempt);
        if !delay.is_zero() {
            tracing::info!(
                attempt,
                ?delay,
                "waiting before restarting the embedded PostgreSQL"
            );
            tokio::select! {
                _ = stop.cancelled() => return Next::Stop,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        let policy = self.policy.clone();
        self.update(|health| health.restarts_in_a_row = attempt);
        // Not raced against `stop`: an abandoned start would leave a server running.
        match self.server.restart().await {
            Ok(()) => {
                metrics::counter!("tidemark_embedded_postgres_restarts_total", "outcome" => "ok")
                    .increment(1);
                metrics::gauge!("tidemark_embedded_postgres_up").set(1.0);
                self.up_since = Instant::now();
                let pid = self.server.pid();
                tracing::warn!(
                    attempt,
                    pid,
                    "the embedded PostgreSQL is back after a crash"
                );
                self.update(|health| {
                    health.state = ClusterState::Running;
                    health.pid = pid;
                    health.restarts += 1;
                });
            }
            Err(error) => {
                metrics::counter!("tidemark_embedded_postgres_restarts_total", "outcome" => "failed")
                    .increment(1);
                let state = down_state(&policy, attempt);
                tracing::error!(
                    attempt,
                    next_in = ?policy.backoff(attempt.saturating_add(1)),
                    %error,
                    "could not restart the embedded PostgreSQL"
                );
                if state == ClusterState::Failing {
                    tracing::error!(
                        attempt,
                        "the embedded PostgreSQL keeps failing: /health now fails so that this \
                         process gets replaced"
                    );
                }
                self.update(|health| {
                    health.state = state;
                    health.last_error = Some(error.to_string());
                });
            }
        }
        Next::Continue
    }

    fn update(&self, change: impl FnOnce(&mut ClusterHealth)) {
        self.publish.send_modify(change);
    }
}

/// The state of a cluster that is down after `restarts_in_a_row` restarts.
fn down_state(policy: &RestartPolicy, restarts_in_a_row: u32) -> ClusterState {
    if restarts_in_a_row >= policy.unhealthy_after_restarts {
        ClusterState::Failing
    } else {
        ClusterState::Restarting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_once_doubles_and_is_bounded() {
        let policy = RestartPolicy {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(4),
            ..RestartPolicy::default()
        };
        let waits: Vec<u128> = (1..=7).map(|n| policy.backoff(n).as_millis()).collect();
        assert_eq!(waits, [0, 500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(4));
    }

    #[test]
    fn a_cluster_is_unhealthy_only_after_enough_restarts_in_a_row() {
        let policy = RestartPolicy {
            unhealthy_after_restarts: 3,
            ..RestartPolicy::default()
        };
        assert_eq!(down_state(&policy, 0), ClusterState::Restarting);
        assert_eq!(down_state(&policy, 2), ClusterState::Restarting);
        assert_eq!(down_state(&policy, 3), ClusterState::Failing);
    }
}
