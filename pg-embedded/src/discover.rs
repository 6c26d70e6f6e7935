//! Finding the PostgreSQL server binaries (`initdb`, `postgres`) and their major version.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::EmbeddedError;
use crate::BIN_DIR_ENV;

/// Where distributions install versioned server binaries (`<root>/<major>/bin`).
const VERSIONED_INSTALL_ROOT: &str = "/usr/lib/postgresql";

/// Finds the directory holding `initdb` and `postgres`: `explicit` if given, else
/// `$TIDEMARK_PG_BIN`, else the newest `/usr/lib/postgresql/<N>/bin`, else `PATH`.
/// A directory named explicitly or by the variable must hold both; there is no fallback.
pub fn find_binaries(explicit: Option<&Path>) -> Result<PathBuf, EmbeddedError> {
    find_binaries_for(explicit, None)
}

/// Like [`find_binaries`], but among versioned installs prefers `wanted_major` (the version
/// of an existing cluster), so an upgrade that installs a newer major keeps old clusters
/// working.
pub(crate) fn find_binaries_for(
    explicit: Option<&Path>,
    wanted_major: Option<&str>,
) -> Result<PathBuf, EmbeddedError> {
    if let Some(dir) = explicit {
        return require_binaries(dir, || format!("{}", dir.display()));
    }
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let dir = PathBuf::from(dir);
        return require_binaries(&dir, || format!("{BIN_DIR_ENV}={}", dir.display()));
    }

    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir(VERSIONED_INSTALL_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((major, bin))
        })
        .collect();
    versioned.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    let wanted = wanted_major.and_then(|wanted| {
        versioned
            .iter()
            .find(|(major, _)| major.to_string() == wanted)
    });
    if let Some((_, bin)) = wanted.or(versioned.first()) {
        return Ok(bin.clone());
    }

    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        // `initdb` finds `postgres` next to its real location, so follow a symlinked initdb.
        if let Ok(real_initdb) = fs::canonicalize(dir.join("initdb")) {
            if let Some(real_dir) = real_initdb
                .parent()
                .filter(|real_dir| has_server_binaries(real_dir))
            {
                return Ok(real_dir.to_path_buf());
            }
        }
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
    }
    Err(EmbeddedError::BinariesNotFound {
        looked_in: format!("{VERSIONED_INSTALL_ROOT}/<version>/bin or on PATH"),
    })
}

fn require_binaries(
    dir: &Path,
    describe: impl FnOnce() -> String,
) -> Result<PathBuf, EmbeddedError> {
    if has_server_binaries(dir) {
        Ok(dir.to_path_buf())
    } else {
        Err(EmbeddedError::BinariesNotFound {
            looked_in: describe(),
        })
    }
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "postgres"]
        .iter()
        .all(|name| is_executable_file(&dir.join(name)))
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The major version of the binaries, from `postgres --version` ("postgres (PostgreSQL) 15.4 ...").
pub(crate) async fn binaries_major_version(bin_dir: &Path) -> Result<String, EmbeddedError> {
    let postgres = bin_dir.join("postgres");
    let action = format!("run {} --version", postgres.display());
    let mut command = Command::new(&postgres);
    command.arg("--version");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|join_error| io::Error::other(join_error.to_string()))
        .and_then(|output| output)
        .map_err(EmbeddedError::io(action.clone()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_once(") ")
        .map(|(_, version)| {
            version
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|major| !major.is_empty())
        .ok_or_else(|| EmbeddedError::Io {
            action,
            source: io::Error::other(format!("unexpected output {:?}", text.trim())),
        })
}
