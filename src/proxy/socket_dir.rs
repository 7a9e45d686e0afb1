//! What `fanout prepare-socket-dir` does: gives the proxy's socket directory the owner, group and mode
//! the non-root proxy needs. It runs as the init container of the proxy pod, as root with only
//! CAP_CHOWN and CAP_FOWNER, because the image has no shell or `chown`.
//!
//! It is given the admin's socket root (the pod's one hostPath volume) and the group's own
//! directory below it, and walks down from the root one component at a time with
//! `openat(O_PATH | O_NOFOLLOW | O_DIRECTORY)`, creating what is missing with `mkdirat`, so
//! that no symlink is ever followed and every step acts on the inode it checked. The root and
//! every directory between it and the group's must be owned by root (or the caller) and
//! writable by nobody else (the classic secure-path check): a directory some other user owns
//! or may write to, such as another group's directory that its proxy (uid 65532) owns, is
//! refused, since its owner could swap what lies below for a symlink to a system directory.
//!
//! On the group's directory itself it touches exactly one inode, never what is inside it.
//! Before it takes a directory over (gives it a new owner) it checks that the directory holds
//! nothing but unix sockets, so a directory with other contents is refused instead of handed to
//! the proxy user. A directory already as wanted is left alone (idempotent).
//!
//! Longer than 500 lines for a reason: over half of it is tests (every refusal of a directory the
//! proxy must not take over); the code is one rule, under 370 lines.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::{File, OpenOptions, Permissions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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

/// Mode of the directories created between the root and the group's directory.
const ANCESTOR_MODE: libc::mode_t = 0o755;

/// Whether a directory on the way down may be trusted: owned by root (or by us, who could do
/// anything it allows anyway) and writable by neither its group nor others.
pub fn is_trusted_ancestor(attrs: DirAttrs, our_uid: u32) -> bool {
    (attrs.uid == 0 || attrs.uid == our_uid) && attrs.mode & 0o022 == 0
}

/// The components of `path` below `root` (both normalized), or why there are none.
fn components_below<'a>(root: &Path, path: &'a Path) -> Result<Vec<&'a OsStr>, SocketDirError> {
    let below = path
        .strip_prefix(root)
        .map_err(|_| refused(path, format!("is not below the socket root {}", root.display())))?;
    let components: Vec<&OsStr> = below.iter().collect();
    if components.is_empty() {
        return Err(refused(
            path,
            "is the socket root itself, not a directory below it",
        ));
    }
    Ok(components)
}

/// Makes `path`, a directory below the admin's socket root `root`, owned by
/// `wanted.uid:wanted.gid` with mode `wanted.mode`, walking down from `root` (see the module).
pub fn prepare(root: &Path, path: &Path, wanted: DirAttrs) -> Result<Prepared, SocketDirError> {
    let root = normalize_path(root)?;
    let path = normalize_path(path)?;
    let path = path.as_path();
    let components = components_below(&root, path)?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let our_uid = unsafe { libc::geteuid() };
    let (leaf, ancestors) = components
        .split_last()
        .expect("components_below returns at least one");

    let mut dir = open_directory(&root)?;
    let mut at = root.clone();
    check_ancestor(&at, &dir, our_uid)?;
    for name in ancestors {
        at.push(name);
        make_dir_at(&dir, name, ANCESTOR_MODE, &at)?;
        dir = open_directory_at(&dir, name, &at)?;
        check_ancestor(&at, &dir, our_uid)?;
    }
    // Mode 0700 until chown/chmod below.
    let created = make_dir_at(&dir, leaf, 0o700, path)?;
    let dir = open_directory_at(&dir, leaf, path)?;

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

fn check_ancestor(path: &Path, dir: &File, our_uid: u32) -> Result<(), SocketDirError> {
    let attrs = DirAttrs::of(&dir.metadata().map_err(io_error(path, "inspect"))?);
    if is_trusted_ancestor(attrs, our_uid) {
        return Ok(());
    }
    Err(refused(
        path,
        format!(
            "is {attrs}: every directory from the socket root down to the group's own must be \
             owned by root and writable by nobody else, or its owner could swap what lies below \
             it (is socketDir inside another group's directory?)"
        ),
    ))
}

fn c_name(name: &OsStr, path: &Path) -> Result<CString, SocketDirError> {
    CString::new(name.as_bytes()).map_err(|_| refused(path, "has a NUL byte in a name"))
}

/// `mkdirat(parent, name, mode)`; false when something of that name exists already (what it
/// is, `open_directory_at` checks without following it).
fn make_dir_at(parent: &File, name: &OsStr, mode: libc::mode_t, path: &Path) -> Result<bool, SocketDirError> {
    let name = c_name(name, path)?;
    // SAFETY: a valid descriptor and a NUL-terminated name that outlives the call.
    if unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), mode) } == 0 {
        return Ok(true);
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        e => Err(io_error(path, "create it")(e)),
    }
}

/// Opens `name` in `parent` as an `O_PATH` descriptor, refusing a symlink or a non-directory.
fn open_directory_at(parent: &File, name: &OsStr, path: &Path) -> Result<File, SocketDirError> {
    let c_name = c_name(name, path)?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid descriptor and a NUL-terminated name that outlives the call.
    let fd = unsafe { libc::openat(parent.as_raw_fd(), c_name.as_ptr(), flags) };
    if fd < 0 {
        return Err(open_error(path, std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a descriptor openat just returned, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn open_error(path: &Path, e: std::io::Error) -> SocketDirError {
    match e.raw_os_error() {
        Some(libc::ELOOP) => refused(path, "is a symlink; refusing to follow it"),
        // O_PATH with O_NOFOLLOW opens a symlink itself, which O_DIRECTORY then refuses.
        Some(libc::ENOTDIR) => refused(path, "is not a directory (or is a symlink)"),
        _ => io_error(path, "open")(e),
    }
}

/// The `/proc/self/fd` path of an open descriptor: chown, chmod and opendir on it reach
/// exactly the inode behind the descriptor, whatever happens to `path` meanwhile.
fn inode_path(dir: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// Opens the socket root as an `O_PATH` descriptor (`O_NOFOLLOW | O_DIRECTORY`: the root
/// itself is not a symlink; the path leading to it is the admin's). `O_PATH` needs no read
/// permission on the directory, and every later step goes through descriptors.
fn open_directory(path: &Path) -> Result<File, SocketDirError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| open_error(path, e))
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
pub fn run(root: &Path, path: &Path, wanted: DirAttrs) -> Result<(), SocketDirError> {
    let prepared = prepare(root, path, wanted)?;
    tracing::info!(
        root = %root.display(),
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
        let first = prepare(tmp.path(), &dir, wanted(0o750)).unwrap();
        assert!(first.created);
        assert_eq!(attrs(&dir), wanted(0o750));
        let second = prepare(tmp.path(), &dir, wanted(0o750)).unwrap();
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
        let prepared = prepare(tmp.path(), &dir, wanted(0o2750)).unwrap();
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
            let err = prepare(tmp.path(), &given, wanted(0o750)).unwrap_err();
            assert!(err.to_string().contains("symlink"), "{err}");
        }
        assert_eq!(attrs(&target).mode, 0o755, "the symlink's target is untouched");
    }

    #[test]
    fn refuses_a_file_and_creates_missing_parents_owned_by_us_and_closed_to_others() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = prepare(tmp.path(), &file, wanted(0o750)).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");

        let deep = tmp.path().join("team/sub/ns.g");
        assert!(prepare(tmp.path(), &deep, wanted(0o750)).unwrap().created);
        for parent in ["team", "team/sub"] {
            assert_eq!(attrs(&tmp.path().join(parent)), wanted(0o755), "{parent}");
        }
        assert_eq!(attrs(&deep), wanted(0o750));
    }

    #[test]
    fn the_path_must_lie_below_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        for outside in [
            tmp.path().join("elsewhere"),
            root.clone(),
            tmp.path().join("rootx/g"),
        ] {
            let err = prepare(&root, &outside, wanted(0o750)).unwrap_err();
            assert!(matches!(err, SocketDirError::Refused { .. }), "{err}");
        }
        assert!(!tmp.path().join("elsewhere").exists());
    }

    #[test]
    fn a_symlink_on_the_way_down_is_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::create_dir_all(victim.join("g")).unwrap();
        std::fs::set_permissions(victim.join("g"), Permissions::from_mode(0o755)).unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("team")).unwrap();
        let err = prepare(&root, &root.join("team/g"), wanted(0o750)).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(attrs(&victim.join("g")).mode, 0o755, "the target is untouched");
        // The root itself may not be a symlink either.
        let link_root = tmp.path().join("link-root");
        std::os::unix::fs::symlink(&victim, &link_root).unwrap();
        let err = prepare(&link_root, &link_root.join("g"), wanted(0o750)).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(attrs(&victim.join("g")).mode, 0o755);
    }

    #[test]
    fn an_ancestor_others_may_write_to_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let team = tmp.path().join("team");
        std::fs::create_dir(&team).unwrap();
        for mode in [0o775, 0o757, 0o1777] {
            std::fs::set_permissions(&team, Permissions::from_mode(mode)).unwrap();
            let err = prepare(tmp.path(), &team.join("ns.g"), wanted(0o750)).unwrap_err();
            assert!(
                err.to_string().contains("writable by nobody else"),
                "{mode:o}: {err}"
            );
        }
        assert!(!team.join("ns.g").exists(), "nothing created below it");
        std::fs::set_permissions(tmp.path(), Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(&team, Permissions::from_mode(0o755)).unwrap();
        let err = prepare(tmp.path(), &team.join("ns.g"), wanted(0o750)).unwrap_err();
        assert!(
            err.to_string().contains(&tmp.path().display().to_string()),
            "the root is checked too: {err}"
        );
    }

    #[test]
    fn trusted_ancestors_are_root_or_ours_and_closed() {
        let dir = |uid, mode| DirAttrs { uid, gid: 0, mode };
        assert!(is_trusted_ancestor(dir(0, 0o755), 1000));
        assert!(is_trusted_ancestor(dir(1000, 0o750), 1000));
        assert!(is_trusted_ancestor(dir(0, 0o2755), 0));
        assert!(!is_trusted_ancestor(dir(65532, 0o750), 0));
        assert!(!is_trusted_ancestor(dir(0, 0o775), 0));
        assert!(!is_trusted_ancestor(dir(0, 0o1777), 0));
    }

    #[test]
    fn a_directory_the_owner_already_has_is_adjusted_whatever_it_holds() {
        // The contents guard is for taking a directory over; this one is ours already.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fanout");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();
        std::fs::write(dir.join("note"), b"x").unwrap();
        assert!(prepare(tmp.path(), &dir, wanted(0o750)).unwrap().changes.chmod);
        assert!(!prepare(tmp.path(), &dir, wanted(0o750)).unwrap().changes.any());
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
        let err = prepare(tmp.path(), &system, proxy).unwrap_err();
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
        let prepared = prepare(tmp.path(), &dir, target).unwrap();
        assert_eq!((prepared.changes.chown, prepared.changes.chmod), (true, true));
        assert_eq!(attrs(&dir), target);
        let inside = std::fs::symlink_metadata(&socket).unwrap();
        assert_eq!((inside.uid(), inside.gid()), me(), "contents keep their owner");
        // A new group for the same directory: only chown, setgid kept.
        let regrouped = DirAttrs { gid: 4343, ..target };
        let again = prepare(tmp.path(), &dir, regrouped).unwrap();
        assert_eq!((again.changes.chown, again.changes.chmod), (true, false));
        assert_eq!(attrs(&dir), regrouped);
    }

    const PROXY: DirAttrs = DirAttrs {
        uid: 65532,
        gid: 65532,
        mode: 0o750,
    };

    /// A root-owned directory holding only a socket: what the contents guard alone would hand
    /// over (think `/var/lib/kubelet/pod-resources`).
    fn victim(parent: &Path) -> (PathBuf, UnixListener) {
        let victim = parent.join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, Permissions::from_mode(0o755)).unwrap();
        let listener = UnixListener::bind(victim.join("kubelet.sock")).unwrap();
        (victim, listener)
    }

    /// Issue 10: a group's socketDir inside another group's directory, which that group's proxy
    /// (uid 65532) owns and where a hostile proxy image could plant a symlink for the root init
    /// container of the other group.
    #[test]
    fn as_root_a_directory_inside_another_groups_directory_is_refused() {
        if skip_unless_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (victim, _listener) = victim(tmp.path());
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let group_a = root.join("net.a");
        assert!(prepare(&root, &group_a, PROXY).unwrap().created);
        // The hostile proxy of group a plants a symlink where group b's directory will be.
        std::os::unix::fs::symlink(&victim, group_a.join("net.b")).unwrap();
        std::os::unix::fs::lchown(group_a.join("net.b"), Some(65532), Some(65532)).unwrap();
        let err = prepare(&root, &group_a.join("net.b"), PROXY).unwrap_err();
        assert!(
            err.to_string().contains("net.a") && err.to_string().contains("65532:65532"),
            "{err}"
        );
        assert_eq!(attrs(&victim), wanted(0o755), "the symlink's target is untouched");
        // No symlink, a plain directory the proxy made: refused all the same.
        std::fs::remove_file(group_a.join("net.b")).unwrap();
        std::fs::create_dir(group_a.join("net.b")).unwrap();
        assert!(prepare(&root, &group_a.join("net.b/deeper"), PROXY).is_err());
        assert!(prepare(&root, &group_a.join("net.b"), PROXY).is_err());
        // Group a's own directory is still prepared (it is the leaf, not an ancestor).
        assert!(!prepare(&root, &group_a, PROXY).unwrap().changes.any());
    }

    /// The walk holds a descriptor for each step: a directory on the way swapped for a symlink
    /// (and back) while it runs is refused or is the real directory, never followed.
    #[test]
    fn as_root_a_symlink_swapped_in_and_out_meanwhile_is_never_followed() {
        if skip_unless_root() {
            return;
        }
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let tmp = tempfile::tempdir().unwrap();
        let (victim, _listener) = victim(tmp.path());
        std::fs::create_dir(victim.join("g")).unwrap();
        std::fs::set_permissions(victim.join("g"), Permissions::from_mode(0o755)).unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("team/g")).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("swap")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (stop, root) = (stop.clone(), root.clone());
            std::thread::spawn(move || {
                let team = CString::new(root.join("team").as_os_str().as_bytes()).unwrap();
                let swap = CString::new(root.join("swap").as_os_str().as_bytes()).unwrap();
                let mut swaps = 0u64;
                let started = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < std::time::Duration::from_secs(10)
                {
                    // SAFETY: two NUL-terminated paths that outlive the call.
                    let done = unsafe {
                        libc::renameat2(
                            libc::AT_FDCWD,
                            team.as_ptr(),
                            libc::AT_FDCWD,
                            swap.as_ptr(),
                            libc::RENAME_EXCHANGE,
                        )
                    };
                    assert_eq!(done, 0, "{}", std::io::Error::last_os_error());
                    swaps += 1;
                    std::thread::yield_now();
                }
                swaps
            })
        };
        // Until both outcomes were seen often (how the two threads interleave is up to the
        // scheduler), at most 5 s.
        let (mut prepared, mut refused) = (0, 0);
        let started = std::time::Instant::now();
        for i in 0u32.. {
            if (prepared >= 100 && refused >= 100) || started.elapsed() > std::time::Duration::from_secs(5) {
                break;
            }
            // A new group each time, so that every successful run chowns.
            let target = DirAttrs {
                gid: 1000 + i % 2,
                ..PROXY
            };
            match prepare(&root, &root.join("team/g"), target) {
                Ok(_) => prepared += 1,
                Err(SocketDirError::Refused { .. }) => refused += 1,
                Err(other) => panic!("{other}"),
            }
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        eprintln!(
            "{swaps} swaps: {prepared} runs prepared the real directory, {refused} refused the symlink"
        );
        assert!(swaps > 0 && refused > 0, "the race was not exercised");
        assert_eq!(attrs(&victim), wanted(0o755), "the symlink's target is untouched");
        assert_eq!(
            attrs(&victim.join("g")),
            wanted(0o755),
            "and so is what lies below it"
        );
    }
}
