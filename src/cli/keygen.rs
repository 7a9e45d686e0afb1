//! `fanout keygen`: a new CURVE key pair, printed or written to a directory.

use crate::curve::{KeyPair, PUBLIC_KEY_FILE, SECRET_KEY_FILE};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Write `DIR/public.key` (0644) and `DIR/secret.key` (0600) instead of printing; an
    /// existing secret key is never overwritten.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

impl KeygenArgs {
    pub fn run(self) -> crate::Result<()> {
        let pair = KeyPair::generate()?;
        match self.out_dir {
            Some(dir) => {
                pair.write_to_dir(&dir)?;
                // The public key is what goes into allow-lists: say it.
                println!("{}", pair.public);
                eprintln!(
                    "wrote {} and {}",
                    dir.join(PUBLIC_KEY_FILE).display(),
                    dir.join(SECRET_KEY_FILE).display()
                );
            }
            None => {
                // Public first, then secret: a contract scripts read line by line.
                println!("{}", pair.public);
                println!("{}", pair.secret.to_z85());
            }
        }
        Ok(())
    }
}
