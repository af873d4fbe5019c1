//! Identities: one ed25519 secret key per cluster a device takes part in,
//! stored in `identity.key`, and the id52 text of its public key, which is the
//! only name the network knows.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::fsutil;

/// The 52-character z-base-32 text of an ed25519 public key: the canonical,
/// case-sensitive address of a device in a cluster.
#[derive(Clone, Copy, PartialOrd, Ord)]
pub struct Id52(iroh::PublicKey);

/// Equal when the key's 32 bytes are: a plain comparison. The key's own
/// is constant-time (a `black_box` per byte), which a public key does not
/// need and which cost the cluster manager seconds of CPU per config round
/// to 300 machines, where the ACL compares ids by the million.
impl PartialEq for Id52 {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes() == other.0.as_bytes()
    }
}

impl Eq for Id52 {}

impl std::hash::Hash for Id52 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_bytes().hash(state);
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Id52Error {
    #[error("an id52 is 52 characters long, this is {0}")]
    Length(usize),
    #[error("an id52 is lowercase z-base-32 (letters and the digits 1, 3-9), found {0:?}")]
    Alphabet(char),
    #[error("not the public key of an ed25519 identity")]
    NotAKey,
}

impl Id52 {
    pub fn public_key(&self) -> iroh::PublicKey {
        self.0
    }

    pub fn from_public_key(key: iroh::PublicKey) -> Self {
        Id52(key)
    }

    /// Verifies `signature` over `message` by this identity.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = iroh::Signature::from_bytes(signature);
        self.0.verify(message, &signature).is_ok()
    }
}

impl FromStr for Id52 {
    type Err = Id52Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const ALPHABET: &str = "ybndrfg8ejkmcpqxot1uwisza345h769";
        if let Some(c) = s.chars().find(|c| !ALPHABET.contains(*c)) {
            return Err(Id52Error::Alphabet(c));
        }
        if s.len() != 52 {
            return Err(Id52Error::Length(s.len()));
        }
        if let Some(key) = parsed::get(s) {
            return Ok(Id52(key));
        }
        let key = iroh::PublicKey::from_z32(s).map_err(|_| Id52Error::NotAKey)?;
        // 52 characters carry 260 bits for 256: the canonical text is the one
        // the key prints as, so that matching on text is exact.
        if key.to_z32() != s {
            return Err(Id52Error::NotAKey);
        }
        parsed::keep(s, key);
        Ok(Id52(key))
    }
}

/// The id52s this process parsed already, each with its key. Checking that
/// a text is a key decompresses the curve point (~15 µs); every machine's
/// config lists every machine, so each machine parsed the same hundreds of
/// ids again at every config version (300 machines: 90,000 decompressions
/// per round, a core's second). Bounded: emptied when full.
mod parsed {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    const MAX: usize = 16_384;

    fn map() -> &'static Mutex<HashMap<Box<str>, iroh::PublicKey>> {
        static MAP: OnceLock<Mutex<HashMap<Box<str>, iroh::PublicKey>>> = OnceLock::new();
        MAP.get_or_init(Mutex::default)
    }

    pub fn get(text: &str) -> Option<iroh::PublicKey> {
        map().lock().ok()?.get(text).copied()
    }

    pub fn keep(text: &str, key: iroh::PublicKey) {
        if let Ok(mut map) = map().lock() {
            if map.len() >= MAX {
                map.clear();
            }
            map.insert(text.into(), key);
        }
    }
}

impl fmt::Display for Id52 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_z32())
    }
}

impl fmt::Debug for Id52 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id52({self})")
    }
}

/// A device's secret key for one cluster.
#[derive(Clone)]
pub struct Identity {
    secret: iroh::SecretKey,
}

/// Prints only the public half, so a key never lands in a log.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.id52())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error(
        "{path}: key file is readable by group or others (mode {mode:04o}); fix: chmod 600 {path}"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "{path}: not a malai identity key (expected 64 hex characters); restore it from a backup or create a new identity"
    )]
    Malformed { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Identity {
    pub fn generate() -> Self {
        Identity {
            secret: iroh::SecretKey::generate(),
        }
    }

    pub fn id52(&self) -> Id52 {
        Id52(self.secret.public())
    }

    pub fn secret_key(&self) -> &iroh::SecretKey {
        &self.secret
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.secret.sign(message).to_bytes()
    }

    /// Reads a key file, refusing one that group or others may read.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(io)?;
        let malformed = || KeyFileError::Malformed {
            path: path.to_owned(),
        };
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.trim().as_bytes())
            .map_err(|_| malformed())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| malformed())?;
        Ok(Identity {
            secret: iroh::SecretKey::from_bytes(&bytes),
        })
    }

    /// The key file's text: the secret key in hex, and a newline.
    pub fn to_text(&self) -> String {
        let mut text = data_encoding::HEXLOWER.encode(&self.secret.to_bytes());
        text.push('\n');
        text
    }

    /// Writes the key file atomically with mode 0600, whatever the umask.
    pub fn store(&self, path: &Path) -> Result<(), KeyFileError> {
        let text = self.to_text();
        fsutil::write_atomic(path, text.as_bytes(), 0o600).map_err(|source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn id52_round_trips_and_matches_iroh() {
        let id = Identity::generate();
        let text = id.id52().to_string();
        assert_eq!(text.len(), 52);
        assert_eq!(text, id.secret_key().public().to_z32());
        assert_eq!(text.parse::<Id52>().unwrap(), id.id52());
    }

    #[test]
    fn id52_rejects_bad_text() {
        let good = Identity::generate().id52().to_string();
        assert!(matches!(
            good[..51].parse::<Id52>(),
            Err(Id52Error::Length(51))
        ));
        assert!(matches!(
            good.to_uppercase().parse::<Id52>(),
            Err(Id52Error::Alphabet(_))
        ));
        assert!(matches!(
            format!("{}0", &good[..51]).parse::<Id52>(),
            Err(Id52Error::Alphabet('0'))
        ));
    }

    /// Parsed again (from the process's memo), a text gives the same
    /// answer as the first time, and an id always prints as the very text it
    /// was parsed from: no variant of a remembered id is taken for it.
    #[test]
    fn a_parsed_id_is_remembered_exactly() {
        let good = Identity::generate().id52().to_string();
        for last in "ybndrfg8ejkmcpqxot1uwisza345h769".chars() {
            let text = format!("{}{last}", &good[..51]);
            let first = text.parse::<Id52>();
            let again = text.parse::<Id52>();
            assert_eq!(first, again, "{text}");
            if let Ok(id) = first {
                assert_eq!(id.to_string(), text);
            }
        }
        assert_eq!(good.parse::<Id52>().unwrap().to_string(), good);
    }

    #[test]
    fn signatures_verify_only_for_their_key() {
        let a = Identity::generate();
        let b = Identity::generate();
        let sig = a.sign(b"config");
        assert!(a.id52().verify(b"config", &sig));
        assert!(!a.id52().verify(b"other", &sig));
        assert!(!b.id52().verify(b"config", &sig));
    }

    proptest! {
        #[test]
        fn any_key_round_trips(bytes in any::<[u8; 32]>()) {
            let id = Identity { secret: iroh::SecretKey::from_bytes(&bytes) };
            let text = id.id52().to_string();
            prop_assert_eq!(text.parse::<Id52>().unwrap(), id.id52());
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,60}") {
            let _ = s.parse::<Id52>();
        }
    }

    #[test]
    fn key_file_round_trip_and_mode_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let id = Identity::generate();
        id.store(&path).unwrap();
        assert_eq!(Identity::load(&path).unwrap().id52(), id.id52());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load(&path).expect_err("0644 must be refused");
        let msg = err.to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(msg.contains("identity.key"), "{msg}");
    }
}
