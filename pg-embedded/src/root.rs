//! Running as root: PostgreSQL refuses root, so the server runs as the `postgres` OS user,
//! which must own its directories and be able to reach them.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::{chown, Gid, Uid, User};

use crate::error::EmbeddedError;
use crate::SUPERUSER;

/// The OS user the server runs as when we are root (PostgreSQL refuses to run as root).
#[derive(Debug, Clone)]
pub(crate) struct ServerUser {
    uid: Uid,
    gid: Gid,
}

impl ServerUser {
    /// `None` when not root: the server then runs as the current user.
    pub(crate) fn for_current_process() -> Result<Option<ServerUser>, EmbeddedError> {
        if !Uid::effective().is_root() {
            return Ok(None);
        }
        match User::from_name(SUPERUSER) {
            Ok(Some(user)) => Ok(Some(ServerUser {
                uid: user.uid,
                gid: user.gid,
            })),
            Ok(None) => Err(EmbeddedError::PostgresUserMissing),
            Err(errno) => Err(EmbeddedError::Io {
                action: format!("look up the `{SUPERUSER}` OS user"),
                source: errno.into(),
            }),
        }
    }

    /// Runs `command` as this user. Without explicit groups, std also drops root's
    /// supplementary groups before switching uid.
    pub(crate) fn apply(&self, command: &mut Command) {
        command.uid(self.uid.as_raw()).gid(self.gid.as_raw());
    }

    pub(crate) fn give(&self, path: &Path) -> Result<(), EmbeddedError> {
        chown(path, Some(self.uid), Some(self.gid)).map_err(|errno| EmbeddedError::Io {
            action: format!("give {} to the `{SUPERUSER}` OS user", path.display()),
            source: errno.into(),
        })
    }
}

/// Fails early, with advice, when the server user could not enter an ancestor of `data_dir`
/// (e.g. a data directory under /root). Ignores ACLs; std runs the server without
/// supplementary groups, so owner, primary group and others are what count.
pub(crate) fn check_reachable_by(user: &ServerUser, data_dir: &Path) -> Result<(), EmbeddedError> {
    for ancestor in data_dir.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.mode();
        let may_enter = if meta.uid() == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !may_enter {
            return Err(EmbeddedError::DataDirUnreachable {
                data_dir: data_dir.to_path_buf(),
                blocked_at: ancestor.to_path_buf(),
            });
        }
    }
    Ok(())
}

pub(crate) fn check_owner(
    data_dir: &Path,
    run_as: Option<&ServerUser>,
) -> Result<(), EmbeddedError> {
    let meta = fs::metadata(data_dir)
        .map_err(EmbeddedError::io(format!("inspect {}", data_dir.display())))?;
    let server_uid = run_as.map_or_else(Uid::effective, |user| user.uid).as_raw();
    if meta.uid() != server_uid {
        return Err(EmbeddedError::WrongOwner {
            data_dir: data_dir.to_path_buf(),
            owner: meta.uid(),
            server_uid,
        });
    }
    Ok(())
}

/// Creates the missing ancestors of `dir`, giving each to the server user under root.
pub(crate) fn create_parents(dir: &Path, run_as: Option<&ServerUser>) -> Result<(), EmbeddedError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|ancestor| !ancestor.exists())
        .collect();
    for ancestor in missing.into_iter().rev() {
        match fs::create_dir(ancestor) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            other => other.map_err(EmbeddedError::io(format!(
                "create directory {}",
                ancestor.display()
            )))?,
        }
        if let Some(user) = run_as {
            user.give(ancestor)?;
        }
    }
    Ok(())
}

/// Creates `dir` (if missing) with mode 0700, owned by the server user.
pub(crate) fn create_private_dir(
    dir: &Path,
    run_as: Option<&ServerUser>,
) -> Result<(), EmbeddedError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        other => other.map_err(EmbeddedError::io(format!(
            "create directory {}",
            dir.display()
        )))?,
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(EmbeddedError::io(
        format!("restrict {} to its owner", dir.display()),
    ))?;
    if let Some(user) = run_as {
        user.give(dir)?;
    }
    Ok(())
}
