//! Unix socket files behind `ipc://` endpoints: the parent directory is created, a stale
//! socket left by a dead proxy is replaced, anything else is refused (libzmq itself would
//! unlink whatever sits at the path), permissions are set after bind, and on shutdown the
//! file is removed only if it is still the one this proxy bound.

use super::ProxyError;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The file path of an `ipc://` endpoint, or `None` for other transports.
pub fn ipc_path(endpoint: &str) -> Option<PathBuf> {
    endpoint
        .strip_prefix("ipc://")
        .filter(|path| !path.is_empty() && *path != "*")
        .map(PathBuf::from)
}

/// Makes `path` ready for libzmq to bind: creates the parent directory and removes a stale
/// socket file. Refuses a path that holds anything but a socket, and a socket another live
/// process still accepts connections on.
pub fn prepare(path: &Path) -> Result<(), ProxyError> {
    let refuse = |reason: String| ProxyError::SocketFile {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| refuse(format!("cannot create directory {}: {e}", parent.display())))?;
    }
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(refuse(format!("cannot inspect: {e}"))),
    };
    if !metadata.file_type().is_socket() {
        return Err(refuse(
            "exists and is not a unix socket; refusing to replace it".into(),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(refuse(
            "another process is listening on it (is another proxy running?)".into(),
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing stale unix socket file");
            std::fs::remove_file(path).map_err(|e| refuse(format!("cannot remove stale socket: {e}")))
        }
        Err(e) => Err(refuse(format!("cannot tell whether it is stale: {e}"))),
    }
}

/// A socket file this proxy bound, remembered by inode so that shutdown never removes a
/// file somebody else put there since.
#[derive(Debug)]
pub struct BoundSocketFile {
    path: PathBuf,
    inode: u64,
}

impl BoundSocketFile {
    /// Sets the permission bits of a freshly bound socket file and remembers it.
    pub fn after_bind(path: &Path, mode: u32) -> Result<Self, ProxyError> {
        let refuse = |reason: String| ProxyError::SocketFile {
            path: path.to_path_buf(),
            reason,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| refuse(format!("cannot set mode {mode:o}: {e}")))?;
        let inode = std::fs::symlink_metadata(path)
            .map_err(|e| refuse(format!("cannot inspect after bind: {e}")))?
            .ino();
        Ok(Self {
            path: path.to_path_buf(),
            inode,
        })
    }

    /// Removes the file if it is still ours; problems are logged, not returned, because
    /// shutdown goes on regardless.
    pub fn remove(self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(metadata) if metadata.ino() == self.inode => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove socket file");
                }
            }
            Ok(_) => tracing::warn!(
                path = %self.path.display(),
                "socket file was replaced by someone else; leaving it"
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "cannot inspect socket file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipc_path_only_for_ipc_endpoints() {
        assert_eq!(
            ipc_path("ipc:///var/run/fanout/a.b.sock"),
            Some(PathBuf::from("/var/run/fanout/a.b.sock"))
        );
        assert_eq!(
            ipc_path("ipc://relative.sock"),
            Some(PathBuf::from("relative.sock"))
        );
        assert_eq!(ipc_path("ipc://*"), None);
        assert_eq!(ipc_path("ipc://"), None);
        assert_eq!(ipc_path("tcp://127.0.0.1:1"), None);
    }
}
