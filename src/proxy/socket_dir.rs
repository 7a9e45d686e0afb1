//! What `fanout prepare-socket-dir` does: gives the proxy's socket directory the owner, group and mode
//! the non-root proxy needs. It runs as the init container of the proxy pod, as root with only
//! CAP_CHOWN and CAP_FOWNER, because the kubelet creates a `DirectoryOrCreate` hostPath
//! root-owned with mode 0755 and the image has no shell or `chown`.
//!
//! It touches exactly one inode, the directory itself (never what is inside it), through a
//! descriptor opened with `O_NOFOLLOW | O_DIRECTORY` (and `/proc/self/fd`), so a symlink is
//! refused rather than followed. Before it takes a directory over (gives it a new owner) it
//! checks that the directory holds nothing but unix sockets, so a `socketDir` pointing at a
//! system directory such as `/etc` is refused instead of handed to the proxy user. A directory already as wanted is left alone (idempotent).

use std::ffi::OsString;
use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The subcommand's name, shared by the CLI and the DaemonSet the controller writes.
pub const SUBCOMMAND: &str = "prepare-socket-dir";
/// Highest uid/gid accepted: Kubernetes ids are non-negative int32s, and `u32::MAX` would mean
/// "leave unchanged" to chown(2).
pub const MAX_ID: u32 = i32::MAX as u32;
/// The permission bits (with setgid and sticky) a mode may carry.
const MODE_BITS: u32 = 0o7777;

/// Owner, group and permission bits of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirAttrs {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits including setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
}

impl DirAttrs {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            uid: metadata.uid(),
            gid: metadata.gid(),
            mode: metadata.mode() & MODE_BITS,
        }
    }
}

impl fmt::Display for DirAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} mode {:04o}", self.uid, self.gid, self.mode)
    }
}

/// What has to change to turn `current` into `wanted`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub chown: bool,
    pub chmod: bool,
}

impl Changes {
    pub fn between(current: DirAttrs, wanted: DirAttrs) -> Self {
        Self {
            chown: (current.uid, current.gid) != (wanted.uid, wanted.gid),
            chmod: current.mode != wanted.mode,
        }
    }
    pub fn any(self) -> bool {
        self.chown || self.chmod
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    pub created: bool,
    pub before: DirAttrs,
    pub changes: Changes,
}

#[derive(Debug, thiserror::Error)]
pub enum SocketDirError {
    #[error("socket directory {path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("socket directory {path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "socket directory {path}: is {found} after preparing, not {wanted}{hint}",
        hint = if found.mode & 0o2000 == 0 && wanted.mode & 0o2000 != 0 {
            " (the kernel drops setgid on chmod unless the group is one of the process's groups or it has CAP_FSETID)"
        } else {
            ""
        }
    )]
    NotApplied {
        path: PathBuf,
        found: DirAttrs,
        wanted: DirAttrs,
    },
}

fn refused(path: &Path, reason: impl Into<String>) -> SocketDirError {
    SocketDirError::Refused {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_error(path: &Path, action: impl Into<String>) -> impl FnOnce(std::io::Error) -> SocketDirError {
    let path = path.to_path_buf();
    let action = action.into();
    move |source| SocketDirError::Io { path, action, source }
}

/// Parses an octal directory mode. Refuses setuid (meaningless on a directory) and write
/// permission for others (a host directory anyone may write to).
pub fn parse_dir_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|mode| *mode <= MODE_BITS)
        .ok_or_else(|| format!("{text:?} is not an octal mode such as 0750 or 2750"))?;
    if mode & 0o4000 != 0 {
        return Err(format!(
            "{text:?} sets setuid, which means nothing on a directory"
        ));
    }
    if mode & 0o002 != 0 {
        return Err(format!("{text:?} lets everyone write to the directory"));
    }
    Ok(mode)
}

/// Checks the path and returns it without trailing slashes (a trailing slash would make the
/// kernel follow a symlink in the last component, `O_NOFOLLOW` or not).
pub fn normalize_path(path: &Path) -> Result<PathBuf, SocketDirError> {
    if !path.is_absolute() {
        return Err(refused(path, "must be an absolute path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(refused(path, "must not contain `..`"));
    }
    let normal: PathBuf = path.components().collect();
    if normal.parent().is_none() {
        return Err(refused(path, "refusing to take over the root directory"));
    }
    Ok(normal)
}

/// The first entry of a directory listing that is not a unix socket, if any.
pub fn first_foreign_entry(entries: impl IntoIterator<Item = (OsString, bool)>) -> Option<OsString> {
    entries
        .into_iter()
        .find(|(_, is_socket)| !is_socket)
        .map(|(name, _)| name)
}

/// Makes `path` a directory owned by `wanted.uid:wanted.gid` with mode `wanted.mode`.
pub fn prepare(path: &Path, wanted: DirAttrs) -> Result<Prepared, SocketDirError> {
    let path = normalize_path(path)?;
    let path = path.as_path();
    let created = create_if_missing(path)?;
    let dir = open_directory(path)?;
    let before = DirAttrs::of(&dir.metadata().map_err(io_error(path, "inspect"))?);
    let changes = Changes::between(before, wanted);
    if !changes.any() {
        return Ok(Prepared {
            created,
            before,
            changes,
        });
    }
    // The guard is for taking a directory over; one the proxy user owns already was taken
    // over by an earlier run (and root without CAP_DAC_READ_SEARCH may not list it).
    if !created && before.uid != wanted.uid {
        refuse_foreign_contents(path, &dir)?;
    }
    let inode = inode_path(&dir);
    // chown before chmod, so that chmod has the last word on the setgid bit. (The kernel keeps
    // setgid on chmod only when the group is one of the process's groups: the pod's
    // supplementalGroups see to it.)
    if changes.chown {
        std::os::unix::fs::chown(&inode, Some(wanted.uid), Some(wanted.gid))
            .map_err(io_error(path, format!("chown to {}:{}", wanted.uid, wanted.gid)))?;
    }
    if changes.chmod {
        std::fs::set_permissions(&inode, Permissions::from_mode(wanted.mode))
            .map_err(io_error(path, format!("chmod to {:04o}", wanted.mode)))?;
    }
    let found = DirAttrs::of(&dir.metadata().map_err(io_error(path, "inspect"))?);
    if found != wanted {
        return Err(SocketDirError::NotApplied {
            path: path.to_path_buf(),
            found,
            wanted,
        });
    }
    Ok(Prepared {
        created,
        before,
        changes,
    })
}

/// The `/proc/self/fd` path of an open descriptor: chown, chmod and opendir on it reach
/// exactly the inode behind the descriptor, whatever happens to `path` meanwhile.
fn inode_path(dir: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// Creates the last component only (mode 0700 until chown/chmod), refusing a symlink or a
/// non-directory sitting there. Returns whether it created it.
fn create_if_missing(path: &Path) -> Result<bool, SocketDirError> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            Err(refused(path, "is a symlink; refusing to follow it"))
        }
        Ok(metadata) if !metadata.is_dir() => Err(refused(path, "exists and is not a directory")),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == ErrorKind::NotFound => match DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => Ok(true),
            // Someone made it meanwhile: open_directory checks what it is.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_error(path, "create it (does its parent exist?)")(e)),
        },
        Err(e) => Err(io_error(path, "inspect")(e)),
    }
}

/// Opens the directory itself as an `O_PATH` descriptor: with `O_NOFOLLOW | O_DIRECTORY` a
/// symlink or file swapped in since `create_if_missing` looked is refused, and `O_PATH` needs
/// no read permission on the directory (root without CAP_DAC_OVERRIDE has none on a 0750
/// directory it does not own). Every later step goes through this descriptor.
fn open_directory(path: &Path) -> Result<File, SocketDirError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refused(path, "is a symlink; refusing to follow it"),
            // O_PATH with O_NOFOLLOW opens a symlink itself, which O_DIRECTORY then refuses.
            Some(libc::ENOTDIR) => refused(path, "is not a directory (or is a symlink)"),
            _ => io_error(path, "open")(e),
        })
}

fn refuse_foreign_contents(path: &Path, dir: &File) -> Result<(), SocketDirError> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(inode_path(dir)).map_err(io_error(path, "list"))? {
        let entry = entry.map_err(io_error(path, "list"))?;
        let file_type = entry.file_type().map_err(io_error(path, "list"))?;
        entries.push((entry.file_name(), file_type.is_socket()));
    }
    match first_foreign_entry(entries) {
        None => Ok(()),
        Some(name) => Err(refused(
            path,
            format!(
                "holds {name:?}, which is not a unix socket; refusing to take over a directory \
                 with other contents (is socketDir a system directory?)"
            ),
        )),
    }
}

/// `fanout prepare-socket-dir`: [`prepare`], then one log line saying what it did.
pub fn run(path: &Path, wanted: DirAttrs) -> Result<(), SocketDirError> {
    let prepared = prepare(path, wanted)?;
    tracing::info!(
        path = %path.display(),
        created = prepared.created,
        before = %prepared.before,
        now = %wanted,
        chown = prepared.changes.chown,
        chmod = prepared.changes.chmod,
        "socket directory ready"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn me() -> (u32, u32) {
        // SAFETY: geteuid/getegid cannot fail and touch no memory.
        unsafe { (libc::geteuid(), libc::getegid()) }
    }

    fn wanted(mode: u32) -> DirAttrs {
        let (uid, gid) = me();
        DirAttrs { uid, gid, mode }
    }

    fn attrs(path: &Path) -> DirAttrs {
        DirAttrs::of(&std::fs::symlink_metadata(path).unwrap())
    }

    #[test]
    fn modes_are_octal_without_setuid_or_world_write() {
        assert_eq!(parse_dir_mode("0750"), Ok(0o750));
        assert_eq!(parse_dir_mode("2750"), Ok(0o2750));
        assert_eq!(parse_dir_mode("770"), Ok(0o770));
        assert_eq!(parse_dir_mode("0o2770"), Ok(0o2770));
        assert_eq!(parse_dir_mode("1770"), Ok(0o1770));
        for bad in ["", "8", "0x1f", "17777", "4750", "0777", "0772", "-1"] {
            assert!(parse_dir_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_are_absolute_not_root_and_lose_trailing_slashes() {
        assert_eq!(
            normalize_path(Path::new("/var/run/fanout/")).unwrap(),
            Path::new("/var/run/fanout")
        );
        assert_eq!(
            normalize_path(Path::new("/run//x/./")).unwrap(),
            Path::new("/run/x")
        );
        for bad in ["", "relative/dir", "/", "//", "/var/../etc", "/a/.."] {
            assert!(normalize_path(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn changes_compare_owner_and_mode_separately() {
        let base = DirAttrs {
            uid: 0,
            gid: 0,
            mode: 0o755,
        };
        assert!(!Changes::between(base, base).any());
        let chown = Changes::between(base, DirAttrs { gid: 7, ..base });
        assert_eq!((chown.chown, chown.chmod), (true, false));
        let chmod = Changes::between(base, DirAttrs { mode: 0o2750, ..base });
        assert_eq!((chmod.chown, chmod.chmod), (false, true));
    }

    #[test]
    fn only_sockets_are_at_home() {
        let socket = |name: &str| (OsString::from(name), true);
        let file = |name: &str| (OsString::from(name), false);
        assert_eq!(first_foreign_entry(vec![]), None);
        assert_eq!(
            first_foreign_entry(vec![socket("a.b.sock"), socket("c.d.sock")]),
            None
        );
        assert_eq!(
            first_foreign_entry(vec![socket("a.b.sock"), file("passwd")]),
            Some(OsString::from("passwd"))
        );
    }

    #[test]
    fn creates_a_missing_directory_with_exact_mode_and_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fanout");
        let first = prepare(&dir, wanted(0o750)).unwrap();
        assert!(first.created);
        assert_eq!(attrs(&dir), wanted(0o750));
        let second = prepare(&dir, wanted(0o750)).unwrap();
        assert!(!second.created);
        assert!(!second.changes.any());
        assert_eq!(attrs(&dir), wanted(0o750));
    }

    #[test]
    fn fixes_the_mode_of_an_existing_directory_and_keeps_its_sockets() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fanout");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let _listener = UnixListener::bind(dir.join("ns.g.sock")).unwrap();
        let prepared = prepare(&dir, wanted(0o2750)).unwrap();
        assert!(!prepared.created);
        assert!(prepared.changes.chmod);
        assert_eq!(attrs(&dir), wanted(0o2750));
        assert!(
            std::fs::symlink_metadata(dir.join("ns.g.sock"))
                .unwrap()
                .file_type()
                .is_socket()
        );
    }

    #[test]
    fn refuses_symlinks_even_with_a_trailing_slash() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, Permissions::from_mode(0o755)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for given in [link.clone(), PathBuf::from(format!("{}/", link.display()))] {
            let err = prepare(&given, wanted(0o750)).unwrap_err();
            assert!(err.to_string().contains("symlink"), "{err}");
        }
        assert_eq!(attrs(&target).mode, 0o755, "the symlink's target is untouched");
    }

    #[test]
    fn refuses_a_file_and_a_missing_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = prepare(&file, wanted(0o750)).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");

        let orphan = tmp.path().join("missing/fanout");
        assert!(matches!(
            prepare(&orphan, wanted(0o750)),
            Err(SocketDirError::Io { .. })
        ));
        assert!(!tmp.path().join("missing").exists(), "never creates parents");
    }

    #[test]
    fn a_directory_the_owner_already_has_is_adjusted_whatever_it_holds() {
        // The contents guard is for taking a directory over; this one is ours already.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fanout");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();
        std::fs::write(dir.join("note"), b"x").unwrap();
        assert!(prepare(&dir, wanted(0o750)).unwrap().changes.chmod);
        assert!(!prepare(&dir, wanted(0o750)).unwrap().changes.any());
    }

    fn skip_unless_root() -> bool {
        let root = me().0 == 0;
        if !root {
            eprintln!("skipped: needs root to chown to another uid");
        }
        !root
    }

    #[test]
    fn as_root_refuses_to_take_over_a_directory_with_other_contents() {
        if skip_unless_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let system = tmp.path().join("etc");
        std::fs::create_dir(&system).unwrap();
        std::fs::set_permissions(&system, Permissions::from_mode(0o755)).unwrap();
        std::fs::write(system.join("passwd"), b"root:x:0:0").unwrap();
        let proxy = DirAttrs {
            uid: 65532,
            gid: 65532,
            mode: 0o750,
        };
        let err = prepare(&system, proxy).unwrap_err();
        assert!(err.to_string().contains("\"passwd\""), "{err}");
        assert_eq!(attrs(&system), wanted(0o755), "left as it was");
    }

    /// As root (as in the init container), the owner really changes, setgid survives, and
    /// nothing inside the directory changes owner (never recursive).
    #[test]
    fn as_root_changes_owner_and_group_but_not_the_contents() {
        if skip_unless_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fanout");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let socket = dir.join("ns.g.sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        let target = DirAttrs {
            uid: 65532,
            gid: 4242,
            mode: 0o2750,
        };
        let prepared = prepare(&dir, target).unwrap();
        assert_eq!((prepared.changes.chown, prepared.changes.chmod), (true, true));
        assert_eq!(attrs(&dir), target);
        let inside = std::fs::symlink_metadata(&socket).unwrap();
        assert_eq!((inside.uid(), inside.gid()), me(), "contents keep their owner");
        // A new group for the same directory: only chown, setgid kept.
        let regrouped = DirAttrs { gid: 4343, ..target };
        let again = prepare(&dir, regrouped).unwrap();
        assert_eq!((again.changes.chown, again.changes.chmod), (true, false));
        assert_eq!(attrs(&dir), regrouped);
    }
}
