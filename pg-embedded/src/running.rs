//! How another process reaches a cluster that is already running: the process that starts a
//! cluster records in its data directory how to connect to it (`tidemark.running`: the
//! postmaster's pid, the socket directory and port, and its own pid), and removes the record
//! when it stops the cluster. [`RunningCluster::find`] reads the record, checks that it still
//! describes the live server of this data directory, and waits until that server accepts
//! connections; a command line next to a running server then connects to the server's
//! cluster instead of trying to start a second one on the same directory.
//!
//! A record can outlive its server (kill -9 of the process that wrote it): it counts only
//! while its postmaster is alive, runs `postgres`, works in this data directory and is the pid
//! in PostgreSQL's own lock file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_postgres::{Config, NoTls};

use crate::error::EmbeddedError;
use crate::url::{connection_url, superuser_config};
use crate::{process, POLL_INTERVAL, SUPERUSER};

/// The record's file name, in the data directory.
pub(crate) const RECORD_FILE_NAME: &str = "tidemark.running";

/// What the record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) postmaster_pid: u32,
    /// The process that started the cluster and supervises it.
    pub(crate) owner_pid: u32,
    pub(crate) port: u16,
    /// `None` when the server listens on 127.0.0.1 only.
    pub(crate) socket_dir: Option<PathBuf>,
}

impl Record {
    /// `key=value` lines; `None` when the socket directory cannot be written as one line.
    fn render(&self) -> Option<String> {
        let mut text = String::from(
            "# How to reach the embedded PostgreSQL running on this data directory; written by\n\
             # the Tidemark process that runs it, removed when that process stops it.\n",
        );
        text.push_str(&format!("postmaster_pid={}\n", self.postmaster_pid));
        text.push_str(&format!("owner_pid={}\n", self.owner_pid));
        text.push_str(&format!("port={}\n", self.port));
        if let Some(dir) = &self.socket_dir {
            let dir = dir.to_str().filter(|dir| !dir.contains('\n'))?;
            text.push_str(&format!("socket_dir={dir}\n"));
        }
        Some(text)
    }

    fn parse(text: &str) -> Option<Record> {
        let mut postmaster_pid = None;
        let mut owner_pid = None;
        let mut port = None;
        let mut socket_dir = None;
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (key, value) = line.split_once('=')?;
            match key {
                "postmaster_pid" => postmaster_pid = Some(value.parse().ok()?),
                "owner_pid" => owner_pid = Some(value.parse().ok()?),
                "port" => port = Some(value.parse().ok()?),
                "socket_dir" => socket_dir = Some(PathBuf::from(value)),
                // Later versions may say more; what this one needs is above.
                _ => {}
            }
        }
        Some(Record {
            postmaster_pid: postmaster_pid?,
            owner_pid: owner_pid?,
            port: port?,
            socket_dir,
        })
    }
}

/// Writes the record atomically (a reader sees the old one or the new one, never half).
pub(crate) fn write_record(data_dir: &Path, record: &Record) -> Result<(), EmbeddedError> {
    let path = data_dir.join(RECORD_FILE_NAME);
    let Some(text) = record.render() else {
        return Err(EmbeddedError::Io {
            action: format!("record how to reach the cluster in {}", path.display()),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "the socket directory's path is not one line of UTF-8",
            ),
        });
    };
    let temporary = data_dir.join(format!("{RECORD_FILE_NAME}.{}", std::process::id()));
    let written = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .and_then(|()| fs::rename(&temporary, &path));
    written.map_err(|source| {
        let _ = fs::remove_file(&temporary);
        EmbeddedError::Io {
            action: format!("write {}", path.display()),
            source,
        }
    })
}

/// Removes the record if it names `postmaster_pid` (the server this process stops).
pub(crate) fn remove_record(data_dir: &Path, postmaster_pid: u32) {
    let path = data_dir.join(RECORD_FILE_NAME);
    let ours = read_record(data_dir).is_some_and(|record| record.postmaster_pid == postmaster_pid);
    if ours {
        if let Err(error) = fs::remove_file(&path) {
            tracing::warn!(%error, path = %path.display(), "could not remove the record of the stopped embedded PostgreSQL");
        }
    }
}

fn read_record(data_dir: &Path) -> Option<Record> {
    let text = fs::read_to_string(data_dir.join(RECORD_FILE_NAME)).ok()?;
    Record::parse(&text)
}

/// Whether `record` describes the live server of `data_dir`.
fn describes_live_server(data_dir: &Path, record: &Record) -> bool {
    let Ok(pid) = i32::try_from(record.postmaster_pid) else {
        return false;
    };
    let locked_by = fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|lock| {
            lock.lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
        });
    let runs_postgres = process::command_name(pid).is_none_or(|name| name == "postgres");
    // A postmaster works in its data directory; without /proc nothing can be read here.
    let works_here = match (process::working_dir(pid), fs::canonicalize(data_dir)) {
        (Some(cwd), Ok(dir)) => cwd == dir,
        _ => !process::has_proc(),
    };
    process::is_alive(pid) && locked_by == Some(pid) && runs_postgres && works_here
}

/// A cluster that another process started and runs (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningCluster {
    data_dir: PathBuf,
    socket_dir: Option<PathBuf>,
    port: u16,
    pid: u32,
    owner_pid: u32,
}

impl RunningCluster {
    /// The cluster running on `data_dir`, once it accepts connections; `Ok(None)` when none
    /// is recorded as running (none was started, it was stopped, or it died), so the caller
    /// may start one. Waits at most `timeout` for a recorded live server to accept
    /// connections (it may be starting, or being restarted by its supervisor).
    pub async fn find(
        data_dir: &Path,
        timeout: Duration,
    ) -> Result<Option<RunningCluster>, EmbeddedError> {
        let data_dir = std::path::absolute(data_dir).map_err(EmbeddedError::io(format!(
            "resolve data directory {}",
            data_dir.display()
        )))?;
        let deadline = Instant::now() + timeout;
        loop {
            // Read again each time: a supervisor's restart records a new postmaster.
            let Some(record) = read_record(&data_dir) else {
                return Ok(None);
            };
            if !describes_live_server(&data_dir, &record) {
                return Ok(None);
            }
            let cluster = RunningCluster {
                data_dir: data_dir.clone(),
                socket_dir: record.socket_dir,
                port: record.port,
                pid: record.postmaster_pid,
                owner_pid: record.owner_pid,
            };
            let mut config = cluster.connection_config(SUPERUSER);
            config.connect_timeout(Duration::from_secs(2));
            let last_error = match config.connect(NoTls).await {
                Ok((client, connection)) => {
                    drop(client);
                    let _ = connection.await;
                    return Ok(Some(cluster));
                }
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                return Err(EmbeddedError::NotAnswering {
                    pid: record.postmaster_pid,
                    data_dir,
                    waited: timeout,
                    last_error: last_error.to_string(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Connection settings for database `dbname` as the superuser (over the unix socket when
    /// the server has one).
    pub fn connection_config(&self, dbname: &str) -> Config {
        superuser_config(self.socket_dir.as_deref(), self.port, dbname)
    }

    /// A `postgresql://` URL for database `dbname`.
    pub fn url(&self, dbname: &str) -> String {
        connection_url(&self.connection_config(dbname))
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process that started the cluster and runs it.
    pub fn owner_pid(&self) -> u32 {
        self.owner_pid
    }

    /// The cluster's data directory (absolute).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Creates database `name` unless it exists.
    pub async fn ensure_database(&self, name: &str) -> Result<(), EmbeddedError> {
        crate::cluster::ensure_database(self.connection_config(SUPERUSER), name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let record = Record {
            postmaster_pid: 42,
            owner_pid: 7,
            port: 5432,
            socket_dir: Some(PathBuf::from("/var/lib/tidemark/pg/socket")),
        };
        let text = record.render().expect("a one-line path");
        assert_eq!(Record::parse(&text), Some(record));
        let tcp_only = Record {
            socket_dir: None,
            port: 40123,
            ..Record::parse(&text).expect("parsed")
        };
        assert_eq!(
            Record::parse(&tcp_only.render().expect("no path")),
            Some(tcp_only)
        );
    }

    #[test]
    fn a_damaged_record_is_no_record() {
        assert_eq!(Record::parse("postmaster_pid=42\nport=5432\n"), None);
        assert_eq!(
            Record::parse("postmaster_pid=x\nowner_pid=1\nport=1\n"),
            None
        );
        assert_eq!(Record::parse("garbage"), None);
    }

    #[tokio::test]
    async fn a_record_of_a_dead_server_is_not_a_running_cluster() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        assert_eq!(
            RunningCluster::find(dir.path(), Duration::from_secs(1))
                .await
                .expect("no error"),
            None
        );
        // A pid far above any pid_max: no such process.
        let record = Record {
            postmaster_pid: 2_000_000_000,
            owner_pid: std::process::id(),
            port: 5432,
            socket_dir: Some(dir.path().to_path_buf()),
        };
        write_record(dir.path(), &record).expect("written");
        std::fs::write(dir.path().join("postmaster.pid"), "2000000000\n").expect("written");
        assert_eq!(
            RunningCluster::find(dir.path(), Duration::from_secs(1))
                .await
                .expect("no error"),
            None
        );
        remove_record(dir.path(), 2_000_000_000);
        assert!(!dir.path().join(RECORD_FILE_NAME).exists());
    }
}
