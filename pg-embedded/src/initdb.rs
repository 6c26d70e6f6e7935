//! Creating a cluster with `initdb`, atomically, and reading the version of an existing one.

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::child::spawn_bound_to_process;
use crate::error::EmbeddedError;
use crate::root::{create_parents, create_private_dir, ServerUser};
use crate::SUPERUSER;

/// The major version of the cluster in `data_dir` (its `PG_VERSION`), `None` if there is no
/// cluster yet. A non-empty directory without one is refused rather than overwritten.
pub(crate) fn read_cluster_version(data_dir: &Path) -> Result<Option<String>, EmbeddedError> {
    match fs::read_to_string(data_dir.join("PG_VERSION")) {
        Ok(version) => Ok(Some(version.trim().to_string())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let has_entries =
                fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some());
            if has_entries {
                Err(EmbeddedError::NotACluster {
                    data_dir: data_dir.to_path_buf(),
                })
            } else {
                Ok(None)
            }
        }
        Err(error) => Err(EmbeddedError::Io {
            action: format!("read {}", data_dir.join("PG_VERSION").display()),
            source: error,
        }),
    }
}

/// Runs initdb into a hidden sibling directory and renames it into place, so a run killed
/// halfway never leaves a half-made cluster that would later look reusable. A data directory
/// that already exists (empty) is initialized in place instead: it may be a mount point.
pub(crate) async fn init_cluster(
    bin_dir: &Path,
    data_dir: &Path,
    run_as: Option<&ServerUser>,
    fsync: bool,
) -> Result<(), EmbeddedError> {
    let parent = data_dir.parent().unwrap_or(Path::new("/"));
    create_parents(parent, run_as)?;
    let in_place = data_dir.exists();
    let target = if in_place {
        data_dir.to_path_buf()
    } else {
        let name = data_dir.file_name().unwrap_or_default().to_string_lossy();
        let staging = parent.join(format!(".{name}.initdb"));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(EmbeddedError::io(format!(
                "remove leftover {}",
                staging.display()
            )))?;
        }
        staging
    };
    // We create the directory ourselves so that, under root, it can sit in a directory the
    // server user may not write to.
    create_private_dir(&target, run_as)?;

    let mut command = Command::new(bin_dir.join("initdb"));
    command
        .arg("-D")
        .arg(&target)
        .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8"])
        // The C locale exists everywhere (minimal containers often lack others) and sorts
        // by bytes, which is all an event store needs.
        .arg("--locale=C");
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
    tracing::info!(data_dir = %data_dir.display(), bin_dir = %bin_dir.display(), "creating a PostgreSQL cluster");
    let initdb = spawn_bound_to_process(command)
        .await
        .map_err(EmbeddedError::io(format!(
            "run {}",
            bin_dir.join("initdb").display()
        )))?;
    let output = tokio::task::spawn_blocking(move || initdb.wait_with_output())
        .await
        .map_err(|join_error| io::Error::other(join_error.to_string()))
        .and_then(|output| output)
        .map_err(EmbeddedError::io("wait for initdb"))?;
    if !output.status.success() {
        let _ = if in_place {
            Ok(())
        } else {
            fs::remove_dir_all(&target)
        };
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(EmbeddedError::InitdbFailed {
            data_dir: data_dir.to_path_buf(),
            status: output.status.to_string(),
            output: text.trim_end().to_string(),
        });
    }
    if !in_place {
        fs::rename(&target, data_dir).map_err(EmbeddedError::io(format!(
            "move the new cluster from {} to {}",
            target.display(),
            data_dir.display()
        )))?;
    }
    Ok(())
}
