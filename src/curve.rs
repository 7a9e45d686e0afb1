//! CURVE keys: Z85 text, key files, key pairs, and the client side of a CURVE connection.
//!
//! A key is 32 bytes; on disk and on the command line it is its 40-character Z85 text (what
//! libzmq, pyzmq and czmq print), optionally followed by a newline. A secret key file must not
//! be readable by others: [`read_secret_key_file`] refuses it otherwise (see there for the one
//! allowance Kubernetes mounts need).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

// The one libzmq call neither the `zmq` crate nor `zmq-sys` exports (zmq.h, libzmq >= 4.2).
// libzmq itself is linked through zmq-sys.
unsafe extern "C" {
    fn zmq_curve_public(
        z85_public: *mut std::ffi::c_char,
        z85_secret: *const std::ffi::c_char,
    ) -> std::ffi::c_int;
}

/// Bytes of a CURVE key.
pub const KEY_BYTES: usize = 32;
/// Characters of a key in Z85.
pub const Z85_CHARS: usize = 40;
/// The 85 characters of Z85 (ZeroMQ RFC 32).
const Z85_ALPHABET: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
/// File names `fanout keygen --out-dir` writes.
pub const PUBLIC_KEY_FILE: &str = "public.key";
pub const SECRET_KEY_FILE: &str = "secret.key";

#[derive(Debug, thiserror::Error)]
pub enum CurveError {
    #[error("not a CURVE key: {0}")]
    InvalidKey(&'static str),
    #[error("this libzmq has no CURVE support (it was built without libsodium)")]
    Unsupported,
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ZeroMQ: {0}")]
    Zmq(#[from] zmq::Error),
}

impl CurveError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CurveError + '_ {
        move |source| CurveError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A CURVE public key (safe to print, log and publish).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_BYTES]);

/// A CURVE secret key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; KEY_BYTES]);

/// Decodes a 40-character Z85 key; surrounding whitespace (a trailing newline) is ignored.
pub fn decode_z85(text: &str) -> Result<[u8; KEY_BYTES], CurveError> {
    let text = text.trim();
    if text.len() != Z85_CHARS {
        return Err(CurveError::InvalidKey("a key is 40 Z85 characters"));
    }
    // libzmq's decoder does not reject every character outside the alphabet.
    if !text.bytes().all(|b| Z85_ALPHABET.contains(&b)) {
        return Err(CurveError::InvalidKey("invalid Z85 text"));
    }
    let bytes = zmq::z85_decode(text).map_err(|_| CurveError::InvalidKey("invalid Z85 text"))?;
    let key: [u8; KEY_BYTES] = bytes
        .try_into()
        .map_err(|_| CurveError::InvalidKey("a key is 32 bytes"))?;
    // A 5-character group can spell a value above 2^32, which the decoder wraps silently into
    // some other key (found by tests/properties.rs): a key is admitted only as its one
    // canonical spelling, so an allow-list line never admits a key other than the one written.
    if encode_z85(&key) != text {
        return Err(CurveError::InvalidKey(
            "not canonical Z85 (a 5-character group above 2^32)",
        ));
    }
    Ok(key)
}

fn encode_z85(key: &[u8; KEY_BYTES]) -> String {
    // 32 bytes is a multiple of 4, the only thing Z85 encoding can refuse.
    zmq::z85_encode(key).unwrap_or_default()
}

impl PublicKey {
    pub fn from_z85(text: &str) -> Result<Self, CurveError> {
        decode_z85(text).map(Self)
    }

    pub fn to_z85(&self) -> String {
        encode_z85(&self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_z85())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_z85())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = CurveError;
    fn from_str(text: &str) -> Result<Self, CurveError> {
        Self::from_z85(text)
    }
}

impl SecretKey {
    pub fn from_z85(text: &str) -> Result<Self, CurveError> {
        decode_z85(text).map(Self)
    }

    pub fn to_z85(&self) -> String {
        encode_z85(&self.0)
    }

    /// The public key of this secret key (libzmq's `zmq_curve_public`).
    pub fn public_key(&self) -> Result<PublicKey, CurveError> {
        let secret = std::ffi::CString::new(self.to_z85())
            .map_err(|_| CurveError::InvalidKey("Z85 text has no NUL"))?;
        let mut public = [0u8; Z85_CHARS + 1];
        // SAFETY: zmq_curve_public reads a NUL-terminated 40-character Z85 string and writes
        // 41 bytes (40 characters and a NUL) into a buffer we own of exactly that size.
        let rc = unsafe { zmq_curve_public(public.as_mut_ptr().cast(), secret.as_ptr()) };
        if rc != 0 {
            return Err(match zmq::has("curve") {
                Some(true) => CurveError::InvalidKey("zmq_curve_public refused the secret key"),
                _ => CurveError::Unsupported,
            });
        }
        let text = std::str::from_utf8(&public[..Z85_CHARS])
            .map_err(|_| CurveError::InvalidKey("zmq_curve_public returned non-text"))?;
        PublicKey::from_z85(text)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// True when the linked libzmq can do CURVE.
pub fn supported() -> bool {
    zmq::has("curve") == Some(true)
}

/// A CURVE key pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPair {
    pub public: PublicKey,
    pub secret: SecretKey,
}

impl KeyPair {
    /// A new random key pair (libzmq's `zmq_curve_keypair`, libsodium's random source).
    pub fn generate() -> Result<Self, CurveError> {
        if !supported() {
            return Err(CurveError::Unsupported);
        }
        let pair = zmq::CurveKeyPair::new()?;
        Ok(Self {
            public: PublicKey(pair.public_key),
            secret: SecretKey(pair.secret_key),
        })
    }

    /// The key pair of a secret key file (the public half derived from it).
    pub fn from_secret_key_file(path: &Path) -> Result<Self, CurveError> {
        let secret = read_secret_key_file(path)?;
        Ok(Self {
            public: secret.public_key()?,
            secret,
        })
    }

    /// Writes `dir/public.key` (0644) and `dir/secret.key` (0600), Z85 and a newline each.
    /// Refuses to overwrite an existing secret key: losing one can lock a whole group out.
    pub fn write_to_dir(&self, dir: &Path) -> Result<(), CurveError> {
        std::fs::create_dir_all(dir).map_err(CurveError::io(dir))?;
        let secret_path = dir.join(SECRET_KEY_FILE);
        let public_path = dir.join(PUBLIC_KEY_FILE);
        // create_new: O_EXCL, so an existing secret key (or a symlink planted there) is never
        // followed or replaced; the mode is given at creation, so the key is never readable
        // by others even for a moment.
        let mut secret = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret_path)
            .map_err(|err| match err.kind() {
                std::io::ErrorKind::AlreadyExists => CurveError::KeyFile {
                    path: secret_path.clone(),
                    reason: "already exists; refusing to overwrite a secret key".into(),
                },
                _ => CurveError::Io {
                    path: secret_path.clone(),
                    source: err,
                },
            })?;
        secret
            .write_all(format!("{}\n", self.secret.to_z85()).as_bytes())
            .and_then(|()| secret.sync_all())
            .map_err(CurveError::io(&secret_path))?;
        // The public key may be replaced: it follows the secret key.
        let mut public = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&public_path)
            .map_err(CurveError::io(&public_path))?;
        public
            .write_all(format!("{}\n", self.public.to_z85()).as_bytes())
            .map_err(CurveError::io(&public_path))?;
        Ok(())
    }
}

/// Why a secret key file's permission bits are refused, if they are. Others may have no
/// access at all, and the group no write or execute. Group read is allowed because that is
/// what a Kubernetes Secret volume becomes in a pod with `fsGroup`: the kubelet adds 0440 to
/// whatever `defaultMode` says; the group is then the pod's own fsGroup.
pub fn secret_mode_problem(mode: u32) -> Option<String> {
    let mode = mode & 0o777;
    if mode & 0o007 != 0 {
        Some(format!(
            "mode {mode:03o} lets every user read it; make it 0600 or 0400 (chmod 600, or defaultMode: 0400 on a Secret volume)"
        ))
    } else if mode & 0o030 != 0 {
        Some(format!(
            "mode {mode:03o} lets the group write or execute it; make it 0600 or 0400"
        ))
    } else {
        None
    }
}

/// Reads a secret key file (Z85, optional trailing newline). Symlinks are followed (a
/// Kubernetes Secret volume is a chain of them) and the permissions checked are those of the
/// file finally reached.
pub fn read_secret_key_file(path: &Path) -> Result<SecretKey, CurveError> {
    let refuse = |reason: String| CurveError::KeyFile {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(CurveError::io(path))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if let Some(problem) = secret_mode_problem(meta.permissions().mode()) {
        return Err(refuse(problem));
    }
    // A key file is 41 bytes; reading at most a little more bounds what a wrong path costs.
    let text = read_bounded(path, 256)?;
    SecretKey::from_z85(&text).map_err(|err| refuse(err.to_string()))
}

/// Reads a public key file (Z85, optional trailing newline).
pub fn read_public_key_file(path: &Path) -> Result<PublicKey, CurveError> {
    let text = read_bounded(path, 256)?;
    PublicKey::from_z85(&text).map_err(|err| CurveError::KeyFile {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })
}

fn read_bounded(path: &Path, limit: u64) -> Result<String, CurveError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(CurveError::io(path))?;
    let mut text = String::new();
    file.take(limit)
        .read_to_string(&mut text)
        .map_err(CurveError::io(path))?;
    Ok(text)
}

/// The client end of a CURVE connection: who we are and which server we expect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurveClient {
    /// The proxy's public key: a server with another key fails the handshake.
    pub server: PublicKey,
    /// Our own key pair; the proxy admits us by its public half.
    pub keys: KeyPair,
}

impl CurveClient {
    /// A client with the key pair of `secret_key_file` talking to `server`.
    pub fn from_files(secret_key_file: &Path, server: PublicKey) -> Result<Self, CurveError> {
        Ok(Self {
            server,
            keys: KeyPair::from_secret_key_file(secret_key_file)?,
        })
    }

    /// Sets the three client options on `socket` (before it connects).
    pub fn apply(&self, socket: &zmq::Socket) -> zmq::Result<()> {
        socket.set_curve_serverkey(&self.server.0)?;
        socket.set_curve_publickey(&self.keys.public.0)?;
        socket.set_curve_secretkey(&self.keys.secret.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_libzmq_has_curve() {
        assert_eq!(zmq::has("curve"), Some(true));
    }

    #[test]
    fn a_non_canonical_z85_spelling_is_refused() {
        // Found by tests/properties.rs: "}a(A]" is above 2^32 and libzmq wraps it.
        let text = "}a(A]-aAA](#A#}#a(!AA]A<(a0!}<0-#a#<#aa0";
        let err = PublicKey::from_z85(text).unwrap_err().to_string();
        assert!(err.contains("canonical"), "{err}");
    }

    #[test]
    fn z85_keys_round_trip_and_bad_text_is_refused() {
        let pair = KeyPair::generate().expect("keypair");
        let text = pair.public.to_z85();
        assert_eq!(text.len(), Z85_CHARS);
        assert_eq!(
            PublicKey::from_z85(&format!("{text}\n")).expect("z85"),
            pair.public
        );
        assert_eq!(pair.secret.public_key().expect("derive"), pair.public);
        assert!(PublicKey::from_z85("").is_err());
        assert!(PublicKey::from_z85(&text[..39]).is_err());
        // '"' is not a Z85 character.
        assert!(PublicKey::from_z85(&format!("\"{}", &text[1..])).is_err());
        assert_eq!(format!("{:?}", pair.secret), "SecretKey(..)");
    }

    #[test]
    fn secret_key_modes() {
        assert_eq!(secret_mode_problem(0o600), None);
        assert_eq!(secret_mode_problem(0o400), None);
        assert_eq!(secret_mode_problem(0o440), None);
        assert!(secret_mode_problem(0o644).is_some());
        assert!(secret_mode_problem(0o604).is_some());
        assert!(secret_mode_problem(0o660).is_some());
        assert!(secret_mode_problem(0o100_601).is_some());
    }

    #[test]
    fn key_files_are_written_once_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = KeyPair::generate().expect("keypair");
        pair.write_to_dir(dir.path()).expect("write");
        let secret_path = dir.path().join(SECRET_KEY_FILE);
        let mode = std::fs::metadata(&secret_path)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let read = KeyPair::from_secret_key_file(&secret_path).expect("read");
        assert_eq!(read, pair);
        assert_eq!(
            read_public_key_file(&dir.path().join(PUBLIC_KEY_FILE)).expect("public"),
            pair.public
        );
        let again = KeyPair::generate().expect("keypair").write_to_dir(dir.path());
        assert!(
            matches!(&again, Err(CurveError::KeyFile { reason, .. }) if reason.contains("refusing to overwrite")),
            "{again:?}"
        );
        assert_eq!(
            read_secret_key_file(&secret_path).expect("unchanged"),
            pair.secret
        );
        // World-readable through a symlink: the target's mode counts.
        std::fs::set_permissions(&secret_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&secret_path, &link).expect("symlink");
        let refused = read_secret_key_file(&link);
        assert!(
            matches!(&refused, Err(CurveError::KeyFile { reason, .. }) if reason.contains("every user")),
            "{refused:?}"
        );
    }
}
