//! Unix socket files behind `ipc://` endpoints: the parent directory is created, a stale
//! socket left by a dead proxy is replaced, a live one is taken over only from the group's own
//! proxy (a rolling update), anything else is refused (libzmq itself would unlink whatever sits
//! at the path), permissions are set after bind, and on shutdown the file is removed only if it
//! is still the one this proxy bound.
//!
//! **Takeover.** During a surge rollout the new proxy starts while the old one still serves
//! the socket. The new proxy binds the same path (libzmq unlinks the old file and binds anew,
//! two system calls apart), so every subscriber that connects from then on, and every one that
//! reconnects when the old proxy stops, reaches the new one; the old proxy keeps the
//! connections it has until it stops, and on shutdown leaves the path alone because the file
//! there is no longer its inode. The takeover is allowed only when whatever listens there can
//! only be the same group's proxy: the listener runs as our own uid (`SO_PEERCRED`), the file
//! is ours, and the directory is ours and writable by nobody else. A pod mounts only its
//! group's own directory (`controller::objects`), so another group's proxy, though it runs as
//! the same uid, never sees this path; and whoever else could write into the directory could
//! replace the socket anyway. Anything else listening (another user's process, a socket in a
//! shared directory such as `/tmp`) is refused as before.

use super::ProxyError;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
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

/// Makes `path` ready for libzmq to bind: creates the parent directory, removes a stale socket
/// file and allows the takeover of a live one from the group's own proxy (module comment).
/// Refuses a path that holds anything but a socket, and a live socket anyone else listens on.
pub fn prepare(path: &Path) -> Result<(), ProxyError> {
    let refuse = |reason: String| ProxyError::SocketFile {
        path: path.to_path_buf(),
        reason,
    };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
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
        Ok(stream) => {
            let directory = std::fs::metadata(parent.unwrap_or(Path::new(".")))
                .map_err(|e| refuse(format!("cannot inspect its directory: {e}")))?;
            let live = LiveSocket {
                // SAFETY: geteuid cannot fail and touches no memory.
                us: unsafe { libc::geteuid() },
                listener: listener_uid(&stream),
                file_owner: metadata.uid(),
                dir_owner: directory.uid(),
                dir_mode: directory.mode() & 0o7777,
            };
            match live.refusal() {
                None => {
                    tracing::info!(
                        path = %path.display(),
                        "taking the socket over from the group's running proxy (a rolling update): it keeps its \
                         connections until it stops, new ones come here"
                    );
                    Ok(())
                }
                Some(why) => Err(refuse(format!(
                    "another process is listening on it and {why}; refusing to replace it (is another proxy running?)"
                ))),
            }
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing stale unix socket file");
            std::fs::remove_file(path).map_err(|e| refuse(format!("cannot remove stale socket: {e}")))
        }
        Err(e) => Err(refuse(format!("cannot tell whether it is stale: {e}"))),
    }
}

/// The uid of the process at the other end of a unix socket connection, as the kernel recorded
/// it when that process created its listening socket (`SO_PEERCRED`); None if it does not say.
fn listener_uid(stream: &UnixStream) -> Option<u32> {
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a connected socket we own and a buffer of the length given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut credentials).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<libc::ucred>()).then_some(credentials.uid)
}

/// A live socket file and who could have put it there: what the takeover rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSocket {
    /// Our effective uid.
    pub us: u32,
    /// The uid of the process listening on it, if the kernel said.
    pub listener: Option<u32>,
    /// The socket file's owner.
    pub file_owner: u32,
    /// The owner and permission bits of the directory holding it.
    pub dir_owner: u32,
    pub dir_mode: u32,
}

impl LiveSocket {
    /// Why the path may not be taken over, or None when only the group's own proxy can be
    /// listening there: the listener and the file are ours, and so is the directory, which
    /// nobody else may write to.
    pub fn refusal(&self) -> Option<String> {
        let us = self.us;
        match self.listener {
            None => return Some("the kernel does not say who listens".into()),
            Some(uid) if uid != us => {
                return Some(format!("it runs as uid {uid}, not as this proxy (uid {us})"));
            }
            Some(_) => {}
        }
        if self.file_owner != us {
            return Some(format!(
                "the file belongs to uid {}, not to this proxy (uid {us})",
                self.file_owner
            ));
        }
        if self.dir_owner != us {
            return Some(format!(
                "its directory belongs to uid {}, not to this proxy (uid {us}): not the group's own directory",
                self.dir_owner
            ));
        }
        if self.dir_mode & 0o022 != 0 {
            return Some(format!(
                "its directory (mode {:04o}) is writable by others: not the group's own directory",
                self.dir_mode
            ));
        }
        None
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

    fn ours() -> LiveSocket {
        LiveSocket {
            us: 65532,
            listener: Some(65532),
            file_owner: 65532,
            dir_owner: 65532,
            dir_mode: 0o2750,
        }
    }

    #[test]
    fn only_the_same_user_in_its_own_private_directory_may_be_taken_over() {
        assert_eq!(ours().refusal(), None);
        assert_eq!(
            LiveSocket {
                dir_mode: 0o750,
                ..ours()
            }
            .refusal(),
            None
        );
        let cases = [
            (
                LiveSocket {
                    listener: None,
                    ..ours()
                },
                "does not say",
            ),
            (
                LiveSocket {
                    listener: Some(1000),
                    ..ours()
                },
                "runs as uid 1000",
            ),
            (
                LiveSocket {
                    listener: Some(0),
                    ..ours()
                },
                "runs as uid 0",
            ),
            (
                LiveSocket {
                    file_owner: 0,
                    ..ours()
                },
                "file belongs to uid 0",
            ),
            (
                LiveSocket {
                    dir_owner: 0,
                    ..ours()
                },
                "directory belongs to uid 0",
            ),
            (
                LiveSocket {
                    dir_mode: 0o1777,
                    ..ours()
                },
                "writable by others",
            ),
            (
                LiveSocket {
                    dir_mode: 0o770,
                    ..ours()
                },
                "writable by others",
            ),
            (
                LiveSocket {
                    dir_mode: 0o752,
                    ..ours()
                },
                "writable by others",
            ),
        ];
        for (live, mentions) in cases {
            let refusal = live.refusal().unwrap_or_else(|| panic!("{live:?} taken over"));
            assert!(refusal.contains(mentions), "{live:?}: {refusal}");
        }
    }

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
