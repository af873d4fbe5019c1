//! The signed envelope a config travels in: cluster (the CM's id52), the
//! machine it is for, a version that only goes up, the blake3 hash of the
//! exact bytes, and the CM's ed25519 signature over all of them. Naming the
//! machine in the signed text stops one machine's config being replayed to
//! another.

use serde::{Deserialize, Serialize};

use crate::identity::{Id52, Identity};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub cluster: String,
    pub machine: String,
    pub version: u64,
    pub hash: String,
    /// The machine.toml text, exactly as hashed and signed.
    pub config: String,
    /// Hex of the 64-byte signature.
    pub signature: String,
}

fn signed_text(cluster: &str, machine: &str, version: u64, hash: &str) -> String {
    format!(
        "malai-config/1\ncluster {cluster}\nmachine {machine}\nversion {version}\nblake3 {hash}\n"
    )
}

impl Envelope {
    /// Signs `config` for `machine` as the CM `cm`.
    pub fn seal(cm: &Identity, machine: &Id52, version: u64, config: String) -> Envelope {
        let cluster = cm.id52().to_string();
        let machine = machine.to_string();
        let hash = crate::home::hash_hex(config.as_bytes());
        let sig = cm.sign(signed_text(&cluster, &machine, version, &hash).as_bytes());
        Envelope {
            cluster,
            machine,
            version,
            hash,
            config,
            signature: data_encoding::HEXLOWER.encode(&sig),
        }
    }

    /// Checks that the envelope is from `cm`, for `me`, that the hash is the
    /// hash of the bytes and that the CM signed it.
    pub fn verify(&self, cm: &Id52, me: &Id52) -> Result<(), Unverified> {
        if self.cluster != cm.to_string() {
            return Err(Unverified::OtherCluster(self.cluster.clone()));
        }
        if self.machine != me.to_string() {
            return Err(Unverified::OtherMachine(self.machine.clone()));
        }
        if crate::home::hash_hex(self.config.as_bytes()) != self.hash {
            return Err(Unverified::HashMismatch);
        }
        let sig: [u8; 64] = data_encoding::HEXLOWER_PERMISSIVE
            .decode(self.signature.as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(Unverified::MalformedSignature)?;
        if !cm.verify(
            signed_text(&self.cluster, &self.machine, self.version, &self.hash).as_bytes(),
            &sig,
        ) {
            return Err(Unverified::BadSignature);
        }
        Ok(())
    }
}

/// Why an envelope was refused before its contents were looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("envelope is for cluster {0}, not this cluster's manager")]
    OtherCluster(String),
    #[error("envelope is for machine {0}, not this machine")]
    OtherMachine(String),
    #[error("the config bytes do not match their hash")]
    HashMismatch,
    #[error("malformed signature")]
    MalformedSignature,
    #[error("bad signature: not signed by the cluster manager")]
    BadSignature,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_verify_and_tamper() {
        let cm = Identity::generate();
        let me = Identity::generate().id52();
        let other = Identity::generate().id52();
        let env = Envelope::seal(&cm, &me, 3, "x = 1\n".into());
        env.verify(&cm.id52(), &me).unwrap();
        assert_eq!(
            env.verify(&cm.id52(), &other),
            Err(Unverified::OtherMachine(me.to_string())),
            "not for another machine"
        );
        assert_eq!(
            env.verify(&other, &me),
            Err(Unverified::OtherCluster(cm.id52().to_string())),
            "not from another CM"
        );
        let mut bumped = env.clone();
        bumped.version = 4;
        assert_eq!(
            bumped.verify(&cm.id52(), &me),
            Err(Unverified::BadSignature)
        );
        let mut edited = env.clone();
        edited.config.push('#');
        assert_eq!(
            edited.verify(&cm.id52(), &me),
            Err(Unverified::HashMismatch)
        );
        let forger = Identity::generate();
        let mut forged = Envelope::seal(&forger, &me, 9, "x = 1\n".into());
        forged.cluster = cm.id52().to_string();
        assert_eq!(
            forged.verify(&cm.id52(), &me),
            Err(Unverified::BadSignature)
        );
    }
}
