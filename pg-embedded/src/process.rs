//! Questions about a process by its pid: does it exist, what program runs it, where does it
//! work, is it still the process that had the pid earlier, and where is a pid meaningful.
//!
//! The one implementation of these checks in the workspace: the launcher uses them on
//! PostgreSQL's lock file and leftover backends, the test kit on abandoned test clusters, and
//! the projection engine to see that a worker of this machine has died. Linux answers from
//! `/proc`; elsewhere the `/proc` readers answer `None` (cannot tell), and callers decide what
//! not knowing means for them.

use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Whether a process with this pid exists (a zombie too), asked with signal 0. A process of
/// another user exists as well (`EPERM`). A pid of 0 or below names a process group to
/// `kill`, not a process, and is never alive.
pub fn is_alive(pid: i32) -> bool {
    pid > 0 && matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(Errno::EPERM))
}

/// Whether `/proc` describes the processes of this machine (Linux). Tells "no such process"
/// from "cannot tell" when a `/proc` reader answers `None`.
pub fn has_proc() -> bool {
    Path::new("/proc/self").exists()
}

/// The program name of `pid` (`/proc/<pid>/comm`, at most 15 bytes); `None` when there is
/// no such process or no `/proc`.
pub fn command_name(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim().to_string())
}

/// The working directory of `pid`; `None` when there is no such process, it is a zombie, it
/// belongs to a user we may not inspect, or there is no `/proc`.
pub fn working_dir(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// Every pid of this pid namespace; `None` without `/proc`.
pub fn all_pids() -> Option<Vec<i32>> {
    let entries = fs::read_dir("/proc").ok()?;
    Some(
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .collect(),
    )
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessState {
    /// A zombie (dead, not yet reaped by its parent) or dead.
    pub defunct: bool,
    /// Start time in clock ticks since boot: a pid reused by another process has another.
    pub started: i64,
}

/// `None` when no process has `pid` (or `/proc` cannot tell).
pub fn process_state(pid: i32) -> Option<ProcessState> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<ProcessState> {
    // `pid (comm) state ...`: comm may contain spaces and parentheses, so split after the
    // last ')'. The start time is field 22 of the line, the 20th after the comm.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = *fields.first()?;
    let started = fields.get(19)?.parse().ok()?;
    Some(ProcessState {
        defunct: matches!(state, "Z" | "X" | "x"),
        started,
    })
}

/// Whether `pid` still runs the process that had it when `started` (its start time, if
/// known) was read. Only meaningful for a pid of our own [`ProcessIdentity::scope`]. An
/// unreadable `/proc` answers yes: not knowing must never declare a live process dead.
pub fn still_running(pid: i32, started: Option<i64>) -> bool {
    match process_state(pid) {
        // Either no such process, or `/proc` is unreadable: tell them apart by looking at
        // ourselves.
        None => process_state(std::process::id() as i32).is_none(),
        Some(state) => !state.defunct && started.is_none_or(|s| s == state.started),
    }
}

/// Where a pid means something, and which process had it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// The kernel's boot id and the pid namespace: two processes with the same scope see the
    /// same processes under the same pids.
    pub scope: String,
    /// Start time of the process in clock ticks since boot: a pid reused by another
    /// process has another start time.
    pub started: i64,
}

impl ProcessIdentity {
    /// This process (Linux: `/proc`); `None` where the platform does not say.
    pub fn this_process() -> Option<Self> {
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let namespace = fs::read_link("/proc/self/ns/pid").ok()?;
        Some(ProcessIdentity {
            scope: format!("{} {}", boot.trim(), namespace.display()),
            started: process_state(std::process::id() as i32)?.started,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_pid() -> i32 {
        std::process::id() as i32
    }

    #[test]
    fn this_process_is_alive_and_non_positive_pids_never_are() {
        assert!(is_alive(own_pid()));
        // `kill(0, 0)` and `kill(-1, 0)` would ask about process groups, and succeed.
        assert!(!is_alive(0));
        assert!(!is_alive(-1));
    }

    #[test]
    fn this_process_is_running_under_its_own_start_time() {
        let Some(me) = ProcessIdentity::this_process() else {
            return; // no /proc: nothing here can be judged
        };
        assert!(still_running(own_pid(), Some(me.started)));
        assert!(still_running(own_pid(), None));
        assert!(
            !still_running(own_pid(), Some(me.started + 1)),
            "a pid reused by a process started at another time is not the same process"
        );
    }

    /// A child running `true` and its pid; `None` without /proc (nothing can be judged).
    fn true_child() -> Option<(std::process::Child, i32)> {
        if !has_proc() {
            return None;
        }
        let child = std::process::Command::new("true")
            .spawn()
            .expect("spawning `true`");
        let pid = child.id() as i32;
        Some((child, pid))
    }

    #[test]
    fn a_reaped_child_is_neither_alive_nor_running() {
        let Some((mut child, pid)) = true_child() else {
            return;
        };
        let started = process_state(pid).map(|s| s.started);
        child.wait().expect("reaping the child");
        assert!(!still_running(pid, started));
        assert!(!is_alive(pid));
        assert_eq!(command_name(pid), None);
        assert!(!all_pids().expect("/proc lists pids").contains(&pid));
    }

    #[test]
    fn a_zombie_is_alive_but_no_longer_running() {
        let Some((mut child, pid)) = true_child() else {
            return;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !process_state(pid)
            .expect("an unreaped child has a stat")
            .defunct
        {
            assert!(std::time::Instant::now() < deadline, "`true` never exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(is_alive(pid), "signal 0 reaches a zombie");
        assert!(!still_running(pid, None));
        assert_eq!(working_dir(pid), None, "a zombie has no working directory");
        child.wait().expect("reaping the child");
    }

    #[test]
    fn this_process_is_described_by_proc() {
        if !has_proc() {
            return;
        }
        assert!(all_pids().expect("/proc lists pids").contains(&own_pid()));
        assert_eq!(
            working_dir(own_pid()),
            Some(std::env::current_dir().expect("the current directory"))
        );
        let name = command_name(own_pid()).expect("our own comm");
        assert!(!name.is_empty() && name.len() <= 15, "{name:?}");
    }

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 \
                    1000 10 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(ProcessState {
                defunct: false,
                started: 98765
            })
        );
        let zombie = "7 (x) Z 1 7 7 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 5 0 0 0";
        assert_eq!(parse_stat(zombie).map(|s| s.defunct), Some(true));
        assert_eq!(parse_stat("7 (truncated) S 1"), None);
    }
}
