//! A streaming replica (hot standby) of a running embedded cluster: its data directory is
//! copied from the primary with `pg_basebackup -R` (which also writes `standby.signal` and
//! the `primary_conninfo` to stream from), then it starts like any cluster and follows the
//! primary, read-only.
//!
//! The primary needs nothing beyond initdb's defaults: `wal_level=replica`, WAL senders, and
//! pg_hba.conf's `local replication all trust` line for the superuser.

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::child::spawn_bound_to_process;
use crate::error::EmbeddedError;
use crate::root::{create_parents, create_private_dir, ServerUser};
use crate::running::RECORD_FILE_NAME;
use crate::SUPERUSER;

/// What the copy must not keep of the primary's own running state: its server log, the
/// record of how to reach it, and its socket directory (whose lock file names the primary's
/// live postmaster, which would keep the standby from starting).
const PRIMARY_ONLY: &[&str] = &[RECORD_FILE_NAME, "postgres.log", "socket"];

/// Copies the primary reachable at `socket_or_host`/`port` into `data_dir` (which must not
/// exist, or be empty) as a standby of it.
pub(crate) async fn base_backup(
    bin_dir: &Path,
    host: &str,
    port: u16,
    data_dir: &Path,
    run_as: Option<&ServerUser>,
    fsync: bool,
) -> Result<(), EmbeddedError> {
    if fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(EmbeddedError::StandbyDirNotEmpty {
            data_dir: data_dir.to_path_buf(),
        });
    }
    create_parents(data_dir.parent().unwrap_or(Path::new("/")), run_as)?;
    create_private_dir(data_dir, run_as)?;
    let program = bin_dir.join("pg_basebackup");
    let mut command = Command::new(&program);
    command
        .arg("-D")
        .arg(data_dir)
        .args(["-h", host, "-p", &port.to_string(), "-U", SUPERUSER])
        // Stream the WAL written during the copy; write standby.signal and primary_conninfo;
        // start at once (a fast checkpoint) instead of waiting for the next one.
        .args(["-X", "stream", "-R", "-c", "fast", "-w"]);
    if !fsync {
        command.arg("--no-sync");
    }
    command
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(user) = run_as {
        user.apply(&mut command);
    }
    tracing::info!(data_dir = %data_dir.display(), "copying the primary for a standby (pg_basebackup)");
    let child = spawn_bound_to_process(command)
        .await
        .map_err(EmbeddedError::io(format!("run {}", program.display())))?;
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .map_err(|join_error| io::Error::other(join_error.to_string()))
        .and_then(|output| output)
        .map_err(EmbeddedError::io("wait for pg_basebackup"))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(EmbeddedError::BaseBackupFailed {
            data_dir: data_dir.to_path_buf(),
            status: output.status.to_string(),
            output: text.trim_end().to_string(),
        });
    }
    for name in PRIMARY_ONLY {
        let path = data_dir.join(name);
        let removed = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        };
        removed.map_err(EmbeddedError::io(format!(
            "remove the primary's {} from the standby",
            path.display()
        )))?;
    }
    Ok(())
}
