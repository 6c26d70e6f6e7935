//! Child processes bound to this one: spawned from one long-lived thread with a parent-death
//! signal, so no server outlives the process that started it, and shut down in stages.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::EmbeddedError;
use crate::POLL_INTERVAL;

/// Fast shutdown writes a checkpoint; allow for it before escalating.
const FAST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Immediate shutdown (SIGQUIT) only tells the children to quit.
const IMMEDIATE_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn send_signal(server: &Child, signal: Signal) -> Result<(), Errno> {
    let pid = Pid::from_raw(server.id() as i32);
    match kill(pid, signal) {
        Err(Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// Fast shutdown (SIGINT), then immediate shutdown (SIGQUIT), then SIGKILL.
pub(crate) async fn shut_down(server: &mut Child) -> Result<ExitStatus, EmbeddedError> {
    let stages = [
        (Signal::SIGINT, FAST_SHUTDOWN_TIMEOUT),
        (Signal::SIGQUIT, IMMEDIATE_SHUTDOWN_TIMEOUT),
        (Signal::SIGKILL, Duration::MAX),
    ];
    for (signal, timeout) in stages {
        send_signal(server, signal).map_err(|errno| EmbeddedError::Io {
            action: format!("send {signal} to PostgreSQL (pid {})", server.id()),
            source: errno.into(),
        })?;
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let exited = server.try_wait().map_err(EmbeddedError::io(format!(
                "wait for PostgreSQL (pid {}) to exit",
                server.id()
            )))?;
            if let Some(status) = exited {
                return Ok(status);
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                tracing::warn!(pid = server.id(), %signal, "PostgreSQL did not exit in time; escalating");
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    unreachable!("SIGKILL has no deadline")
}

/// Spawns `command` so that the process gets SIGINT (PostgreSQL's fast shutdown; initdb
/// cleans up) when this process dies, however it dies.
///
/// The parent-death signal fires when the *thread* that forked the child exits, not the
/// process. Tokio worker and blocking threads, and the threads cargo test runs tests on,
/// come and go, so every spawn happens on one dedicated thread that lives as long as the
/// process.
pub(crate) async fn spawn_bound_to_process(mut command: Command) -> io::Result<Child> {
    bind_to_process(&mut command);
    // Ctrl-C in a terminal signals the whole foreground process group; with its own group the
    // server stays up until we stop it, in order, after our own shutdown.
    command.process_group(0);
    let (reply, result) = tokio::sync::oneshot::channel();
    let job: SpawnJob = Box::new(move || {
        let _ = reply.send(command.spawn());
    });
    spawner()?
        .send(job)
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?;
    result
        .await
        .map_err(|_| io::Error::other("the process spawner thread dropped the request"))?
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// The sender to the spawner thread, started on first use. The thread never exits: it
/// waits on the channel, and the sender is kept in a static.
fn spawner() -> io::Result<&'static mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    if let Some(sender) = SPAWNER.get() {
        return Ok(sender);
    }
    let (sender, jobs) = mpsc::channel::<SpawnJob>();
    let mut started = Ok(());
    let sender = SPAWNER.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("tidemark-pg-spawner".into())
            .spawn(move || jobs.into_iter().for_each(|job| job()));
        started = spawned.map(drop);
        sender
    });
    started.map(|()| sender)
}

/// Asks the kernel to send SIGINT to the child when its parent thread dies.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn bind_to_process(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec, after std has switched uid
    // (which matters: a credential change clears the parent-death signal). It only makes
    // the async-signal-safe system calls prctl and getppid, and does not allocate: errors
    // are built from raw OS error codes.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGINT)?;
            // If we died between fork and prctl, the signal was missed: give up.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// No parent-death signal outside Linux: the server outlives a crashed process there.
#[cfg(not(target_os = "linux"))]
fn bind_to_process(_command: &mut Command) {}
