//! `fanout prepare-socket-dir`: the proxy pod's init container.

use crate::proxy::socket_dir::{self, DirAttrs, MAX_ID, parse_dir_mode};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct PrepareSocketDirArgs {
    /// The admin's socket root (the pod's hostPath volume): the walk starts here; it and every
    /// directory below it on the way must be root-owned and writable by nobody else.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Directory to prepare, below --root: created (with the directories leading to it) if
    /// missing; no symlink on the way is followed.
    #[arg(long, value_name = "DIR")]
    pub path: PathBuf,
    /// Owner to give the directory (the proxy's uid).
    #[arg(long, value_name = "UID", value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_ID)))]
    pub uid: u32,
    /// Group to give the directory (the agents' group when sockets are shared through it).
    #[arg(long, value_name = "GID", value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_ID)))]
    pub gid: u32,
    /// Permission bits in octal, e.g. 0750, or 2750 so that sockets inherit the group.
    #[arg(long, value_name = "OCTAL", value_parser = parse_dir_mode)]
    pub mode: u32,
}
impl PrepareSocketDirArgs {
    pub fn run(self) -> crate::Result<()> {
        let wanted = DirAttrs {
            uid: self.uid,
            gid: self.gid,
            mode: self.mode,
        };
        Ok(socket_dir::run(&self.root, &self.path, wanted)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse_as_the_controller_writes_them() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: PrepareSocketDirArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "x",
            "--root",
            "/var/run/fanout",
            "--path",
            "/var/run/fanout/net.updates",
            "--uid",
            "65532",
            "--gid",
            "2000",
            "--mode",
            "2750",
        ])
        .unwrap();
        assert_eq!(
            cli.args,
            PrepareSocketDirArgs {
                root: "/var/run/fanout".into(),
                path: "/var/run/fanout/net.updates".into(),
                uid: 65532,
                gid: 2000,
                mode: 0o2750,
            }
        );
        for bad_id in ["-1", "4294967295", "2147483648"] {
            let parsed = <Cli as clap::Parser>::try_parse_from([
                "x", "--root", "/d", "--path", "/d/g", "--uid", bad_id, "--gid", "1", "--mode", "750",
            ]);
            assert!(parsed.is_err(), "{bad_id}");
        }
    }
}
