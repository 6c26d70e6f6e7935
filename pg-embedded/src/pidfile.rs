//! The lock file (`postmaster.pid`) and processes a dead server left behind: a stale lock
//! file is removed only once nothing uses the old server's shared memory any more.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::EmbeddedError;
use crate::process;
use crate::POLL_INTERVAL;

/// How long to wait for a server left over from an earlier run to finish shutting down.
const LEFTOVER_SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the backends of a killed postmaster get to notice and exit on their own before a
/// restart kills them: they keep the old shared memory attached, and PostgreSQL refuses to
/// start while it is.
const ORPHANED_BACKENDS_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes `postmaster.pid` left by a server that was killed. PostgreSQL would do that
/// itself unless the pid has since been reused by a live process; then it refuses to start.
/// A live postgres on this directory gets a moment to finish shutting down (a restart right
/// after our own parent-death signal), and is otherwise reported. So are backends the dead
/// server left behind that do not exit in that time: the lock file is only removed once
/// nothing uses the old server's shared memory any more. `exited` names a server we reaped
/// ourselves, stale whatever now runs under its pid.
pub(crate) async fn clear_stale_pid_file(
    data_dir: &Path,
    exited: Option<u32>,
) -> Result<(), EmbeddedError> {
    let pid_file = data_dir.join("postmaster.pid");
    let deadline = Instant::now() + LEFTOVER_SERVER_TIMEOUT;
    loop {
        let contents = match fs::read_to_string(&pid_file) {
            Ok(contents) => contents,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(EmbeddedError::io(format!("read {}", pid_file.display()))(
                    error,
                ))
            }
        };
        let pid = contents
            .lines()
            .next()
            .and_then(|line| line.trim().parse::<i32>().ok());
        match pid {
            Some(pid)
                if pid > 0
                    && exited.is_none_or(|exited| i64::from(exited) != i64::from(pid))
                    && process::is_alive(pid)
                    && is_postgres(pid) =>
            {
                if Instant::now() >= deadline {
                    return Err(EmbeddedError::AlreadyRunning {
                        pid,
                        data_dir: data_dir.to_path_buf(),
                    });
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            _ => {
                let leftovers = wait_for_server_processes_to_exit(data_dir, deadline).await;
                if !leftovers.is_empty() {
                    return Err(EmbeddedError::LeftoverProcesses {
                        pids: leftovers,
                        data_dir: data_dir.to_path_buf(),
                    });
                }
                tracing::warn!(pid_file = %pid_file.display(), "removing the lock file of a PostgreSQL server that no longer runs");
                return match fs::remove_file(&pid_file) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => Err(
                        EmbeddedError::io(format!("remove {}", pid_file.display()))(error),
                    ),
                    _ => Ok(()),
                };
            }
        }
    }
}

/// After our postmaster died: gives the backends it left behind a moment to notice and exit,
/// then kills the rest (without a postmaster they can do nothing useful, and they hold the
/// shared memory that keeps a new server from starting) and waits until they are gone.
pub(crate) async fn end_orphaned_backends(data_dir: &Path) -> Result<(), EmbeddedError> {
    let deadline = Instant::now() + ORPHANED_BACKENDS_TIMEOUT;
    let lingering = wait_for_server_processes_to_exit(data_dir, deadline).await;
    if lingering.is_empty() {
        return Ok(());
    }
    tracing::warn!(pids = ?lingering, data_dir = %data_dir.display(), "backends of the dead PostgreSQL server did not exit; killing them");
    for pid in &lingering {
        match kill(Pid::from_raw(*pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(errno) => {
                return Err(EmbeddedError::Io {
                    action: format!("kill leftover PostgreSQL backend (pid {pid})"),
                    source: errno.into(),
                })
            }
        }
    }
    let deadline = Instant::now() + ORPHANED_BACKENDS_TIMEOUT;
    let lingering = wait_for_server_processes_to_exit(data_dir, deadline).await;
    if lingering.is_empty() {
        Ok(())
    } else {
        Err(EmbeddedError::LeftoverProcesses {
            pids: lingering,
            data_dir: data_dir.to_path_buf(),
        })
    }
}

/// Polls until no postgres process works in `data_dir` or `deadline` passes; returns those
/// still there.
async fn wait_for_server_processes_to_exit(data_dir: &Path, deadline: Instant) -> Vec<i32> {
    loop {
        let found = server_processes_in(data_dir);
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The postgres processes whose working directory is `data_dir`: every process of a server
/// changes into its data directory, and keeps it until it exits. A zombie has no working
/// directory, and has already let go of the shared memory. Empty without /proc (not Linux):
/// PostgreSQL's own check of the shared memory then has the last word.
fn server_processes_in(data_dir: &Path) -> Vec<i32> {
    let Ok(data_dir) = fs::canonicalize(data_dir) else {
        return Vec::new();
    };
    let Some(pids) = process::all_pids() else {
        return Vec::new();
    };
    pids.into_iter()
        .filter(|&pid| {
            is_postgres(pid) && process::working_dir(pid).is_some_and(|cwd| cwd == data_dir)
        })
        .collect()
}

/// Whether `pid` runs the postgres executable. Without /proc (not Linux), assume it does.
fn is_postgres(pid: i32) -> bool {
    match process::command_name(pid) {
        Some(command_name) => command_name == "postgres",
        None => !process::has_proc(),
    }
}
