//! One start of the `postgres` server: its command line and settings, the wait until it
//! accepts connections (without a deadline during crash recovery), and the end of its log
//! when it does not.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::child::{send_signal, spawn_bound_to_process};
use crate::cluster::EmbeddedOptions;
use crate::error::EmbeddedError;
use crate::root::ServerUser;
use crate::url::{connection_url, superuser_config};
use crate::{POLL_INTERVAL, SUPERUSER};

/// How much of the server log an error message quotes.
const LOG_TAIL_BYTES: u64 = 4000;

/// One attempt to start the server.
pub(crate) struct Launch<'a> {
    pub(crate) bin_dir: &'a Path,
    pub(crate) data_dir: &'a Path,
    pub(crate) socket_dir: Option<&'a Path>,
    pub(crate) port: u16,
    /// Listen on 127.0.0.1 as well as (or instead of) the socket.
    pub(crate) tcp: bool,
    pub(crate) log_file: &'a Path,
    pub(crate) run_as: Option<&'a ServerUser>,
    pub(crate) options: &'a EmbeddedOptions,
}

impl Launch<'_> {
    pub(crate) async fn run(&self) -> Result<Child, EmbeddedError> {
        let log_start = fs::metadata(self.log_file)
            .map(|meta| meta.len())
            .unwrap_or(0);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.log_file)
            .map_err(EmbeddedError::io(format!(
                "open {}",
                self.log_file.display()
            )))?;
        if let Some(user) = self.run_as {
            user.give(self.log_file)?;
        }
        let log_for_stderr = log.try_clone().map_err(EmbeddedError::io(format!(
            "open {}",
            self.log_file.display()
        )))?;

        let mut command = Command::new(self.bin_dir.join("postgres"));
        command
            .arg("-D")
            .arg(self.data_dir)
            .arg("-p")
            .arg(self.port.to_string());
        for (name, value) in self.settings() {
            let mut setting = OsString::from(name);
            setting.push("=");
            setting.push(value);
            command.arg("-c").arg(setting);
        }
        command
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr);
        if let Some(user) = self.run_as {
            user.apply(&mut command);
        }
        let mut server = spawn_bound_to_process(command)
            .await
            .map_err(EmbeddedError::io(format!(
                "run {}",
                self.bin_dir.join("postgres").display()
            )))?;
        tracing::debug!(pid = server.id(), data_dir = %self.data_dir.display(), "started postgres; waiting until it accepts connections");

        match self.wait_until_ready(&mut server).await {
            Ok(()) => {
                tracing::info!(
                    pid = server.id(),
                    data_dir = %self.data_dir.display(),
                    url = %connection_url(&superuser_config(self.socket_dir, self.port, SUPERUSER)),
                    "embedded PostgreSQL is ready"
                );
                Ok(server)
            }
            Err(reason) => {
                // After SIGKILL the wait returns at once; it reaps the process.
                let _ = send_signal(&server, Signal::SIGKILL);
                let _ = server.wait();
                Err(EmbeddedError::StartFailed {
                    reason,
                    log_file: self.log_file.to_path_buf(),
                    log_tail: read_log_tail(self.log_file, log_start),
                })
            }
        }
    }

    fn settings(&self) -> Vec<(String, String)> {
        let listen_addresses = if self.tcp { "127.0.0.1" } else { "" };
        let socket_directories = self
            .socket_dir
            .map(|dir| dir.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut settings: Vec<(String, String)> = [
            ("listen_addresses", listen_addresses),
            ("unix_socket_directories", &socket_directories),
            ("unix_socket_permissions", "0700"),
            ("max_connections", "200"),
            ("shared_buffers", "128MB"),
            // Output goes to our log file; no log rotation process.
            ("logging_collector", "off"),
            ("log_destination", "stderr"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
        if !self.options.fsync {
            settings.push(("fsync".into(), "off".into()));
            settings.push(("full_page_writes".into(), "off".into()));
        }
        // Later `-c` settings win, so the caller's override ours.
        settings.extend(self.options.settings.iter().cloned());
        settings
    }

    /// Connects until the server accepts; `Err` holds why it never did.
    async fn wait_until_ready(&self, server: &mut Child) -> Result<(), String> {
        let mut config = superuser_config(self.socket_dir, self.port, SUPERUSER);
        config.connect_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + self.options.startup_timeout;
        let mut recovering = false;
        loop {
            match server.try_wait() {
                Ok(Some(status)) => {
                    return Err(format!("the server exited at startup with {status}"))
                }
                Ok(None) => {}
                Err(error) => {
                    return Err(format!("could not check on the server process: {error}"))
                }
            }
            let last_error = match config.connect(NoTls).await {
                Ok((client, connection)) => {
                    // Let the connection say goodbye instead of dropping the socket.
                    drop(client);
                    let _ = connection.await;
                    return Ok(());
                }
                Err(error) => error,
            };
            // Crash recovery replays the WAL written since the last checkpoint, which can take
            // longer than any startup timeout; the server says so while it works.
            if last_error.code() == Some(&SqlState::CANNOT_CONNECT_NOW) {
                if !recovering {
                    recovering = true;
                    tracing::info!(data_dir = %self.data_dir.display(), "PostgreSQL is starting up (recovering); waiting without a deadline");
                }
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "it did not accept connections within {} s; last attempt: {last_error}",
                    self.options.startup_timeout.as_secs()
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// The last few kilobytes written to the log since `start`, from a line boundary.
fn read_log_tail(log_file: &Path, start: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = fs::File::open(log_file)?;
        let len = file.metadata()?.len();
        let from = start.max(len.saturating_sub(LOG_TAIL_BYTES));
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let text = match (from > start, text.find('\n')) {
            (true, Some(newline)) => text[newline + 1..].to_string(),
            _ => text,
        };
        Ok(text.trim_end().to_string())
    };
    read().unwrap_or_else(|error| format!("(could not read the log: {error})"))
}
