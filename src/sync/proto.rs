//! The messages of `malai/config/1`: one request and one answer per stream.
//!
//! Compatibility (docs/COMPATIBILITY.md): messages only gain optional
//! fields, which older peers ignore; a machine says which machine.toml
//! keys it understands by its `PROTOCOL` (in a fetch and in every ack),
//! and the CM sends it nothing newer.

use serde::{Deserialize, Serialize};

use crate::cluster::EditError;
use crate::cluster::envelope::Envelope;
use crate::handover::Link;

pub use crate::personalize::PROTOCOL;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ConfigRequest {
    /// CM -> machine: here is your config.
    Push { envelope: Envelope },
    /// Machine -> CM: send me my latest config, written for `protocol`.
    Fetch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<u32>,
    },
    /// Editor -> CM: send me cluster.toml.
    Download,
    /// Editor -> CM: replace cluster.toml with `text`, if its hash is still
    /// `base_hash` (unless `force`) and `text` validates.
    Upload {
        text: String,
        base_hash: String,
        force: bool,
    },
    /// Machine -> CM, on a connection authenticated with its current key:
    /// from now on I am `new_id52`; `proof` is the new key's signature of
    /// `rotation_message` (so nobody can move a machine to a key it lacks).
    Rotate { new_id52: String, proof: String },
    /// CM -> machine, as a CM key the machine knows (a retired one after a
    /// rotation): the cluster manager's key moved along `chain`, each link
    /// signed by the key it leaves.
    Handover { chain: Vec<Link> },
}

/// The answer to a `Handover`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum HandoverAnswer {
    /// The machine trusts `cm` as its cluster manager from now on (and
    /// restarts its side of the cluster to dial it).
    Accepted {
        cm: String,
    },
    Rejected {
        reason: String,
    },
    Denied {
        reason: String,
    },
}

/// What a rotating machine's new key signs: the cluster manager, the old
/// key and the new one.
pub fn rotation_message(cm: &str, old: &str, new: &str) -> Vec<u8> {
    format!("malai rotate 1\ncm {cm}\nold {old}\nnew {new}\n").into_bytes()
}

/// The answer to a `Rotate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum RotateAnswer {
    /// cluster.toml names the new key instead of the old one, in force as
    /// `version`; the old key is a stranger from now on.
    Rotated {
        version: u64,
    },
    Rejected {
        reason: String,
    },
    Denied {
        reason: String,
    },
}

// One answer type per request kind. They share the JSON form of the one
// answer enum they replace (`{"type": "ack", ...}`, `{"type":
// "rejected", ...}`), so a peer of an older version reads them unchanged.

/// The answer to a `Push`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum PushAnswer {
    /// The machine holds this version now; it understands `protocol`.
    Ack {
        version: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<u32>,
    },
    /// Understood and refused (not newer, invalid, not signed for it);
    /// nothing changed. `holds`: refused as not newer, the version this
    /// machine holds (a CM that lost its state moves past it).
    Rejected {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holds: Option<u64>,
    },
    /// The sender may not push here.
    Denied { reason: String },
}

/// The answer to a `Fetch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum FetchAnswer {
    /// The machine's latest config.
    Config {
        envelope: Envelope,
    },
    Rejected {
        reason: String,
    },
    /// Not a machine of this cluster, or not asking its manager.
    Denied {
        reason: String,
    },
}

/// The answer to a `Download`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DownloadAnswer {
    /// cluster.toml as it is on the CM, its hash, and the version in force.
    File {
        text: String,
        hash: String,
        version: u64,
    },
    Rejected {
        reason: String,
    },
    Denied {
        reason: String,
    },
}

/// The answer to an `Upload`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum UploadAnswer {
    /// The upload is in force as `version`.
    Accepted {
        version: u64,
        hash: String,
    },
    /// The upload was based on an older file; nothing changed.
    Stale {
        current_hash: String,
        version: u64,
    },
    /// The upload does not validate; nothing changed.
    Invalid {
        errors: String,
    },
    /// Reading or writing failed on the CM; nothing changed.
    Rejected {
        reason: String,
    },
    Denied {
        reason: String,
    },
}

/// A request that could not be read: the answer whatever its kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Unreadable {
    Rejected { reason: String },
}

/// What a host writes back: the answer to the kind of request it read.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Push(PushAnswer),
    Fetch(FetchAnswer),
    Download(DownloadAnswer),
    Upload(UploadAnswer),
    Rotate(RotateAnswer),
    Handover(HandoverAnswer),
    Unreadable(Unreadable),
}

/// cluster.toml as the CM has it: text, blake3 hash in hex, version in
/// force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub text: String,
    pub hash: String,
    pub version: u64,
}

/// An upload in force: its version and the hash of the new cluster.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub version: u64,
    pub hash: String,
}

impl From<Result<Downloaded, EditError>> for DownloadAnswer {
    fn from(r: Result<Downloaded, EditError>) -> DownloadAnswer {
        match r {
            Ok(Downloaded {
                text,
                hash,
                version,
            }) => DownloadAnswer::File {
                text,
                hash,
                version,
            },
            Err(EditError::Denied(reason)) => DownloadAnswer::Denied { reason },
            Err(e @ (EditError::Invalid(_) | EditError::Stale { .. } | EditError::Failed(_))) => {
                DownloadAnswer::Rejected {
                    reason: e.to_string(),
                }
            }
        }
    }
}

impl From<DownloadAnswer> for Result<Downloaded, EditError> {
    fn from(a: DownloadAnswer) -> Self {
        match a {
            DownloadAnswer::File {
                text,
                hash,
                version,
            } => Ok(Downloaded {
                text,
                hash,
                version,
            }),
            DownloadAnswer::Denied { reason } => Err(EditError::Denied(reason)),
            DownloadAnswer::Rejected { reason } => Err(EditError::Failed(reason)),
        }
    }
}

impl From<Result<Uploaded, EditError>> for UploadAnswer {
    fn from(r: Result<Uploaded, EditError>) -> UploadAnswer {
        match r {
            Ok(Uploaded { version, hash }) => UploadAnswer::Accepted { version, hash },
            Err(EditError::Denied(reason)) => UploadAnswer::Denied { reason },
            Err(EditError::Invalid(errors)) => UploadAnswer::Invalid { errors },
            Err(EditError::Stale {
                current_hash,
                version,
            }) => UploadAnswer::Stale {
                current_hash,
                version,
            },
            Err(EditError::Failed(reason)) => UploadAnswer::Rejected { reason },
        }
    }
}

impl From<UploadAnswer> for Result<Uploaded, EditError> {
    fn from(a: UploadAnswer) -> Self {
        match a {
            UploadAnswer::Accepted { version, hash } => Ok(Uploaded { version, hash }),
            UploadAnswer::Stale {
                current_hash,
                version,
            } => Err(EditError::Stale {
                current_hash,
                version,
            }),
            UploadAnswer::Invalid { errors } => Err(EditError::Invalid(errors)),
            UploadAnswer::Denied { reason } => Err(EditError::Denied(reason)),
            UploadAnswer::Rejected { reason } => Err(EditError::Failed(reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each answer is written as the one answer enum of earlier versions
    /// wrote it, so old and new peers read each other.
    #[test]
    fn answers_keep_the_wire_form_of_earlier_versions() {
        let json = |a: Answer| serde_json::to_value(a).unwrap();
        assert_eq!(
            json(Answer::Push(PushAnswer::Ack {
                version: 3,
                protocol: None
            })),
            serde_json::json!({"type": "ack", "version": 3})
        );
        // What a first-release machine sends reads as protocol 1 (none).
        let fetch: ConfigRequest =
            serde_json::from_value(serde_json::json!({"type": "fetch"})).unwrap();
        assert!(matches!(fetch, ConfigRequest::Fetch { protocol: None }));
        let ack: PushAnswer =
            serde_json::from_value(serde_json::json!({"type": "ack", "version": 3})).unwrap();
        assert!(matches!(ack, PushAnswer::Ack { protocol: None, .. }));
        assert_eq!(
            json(Answer::Upload(UploadAnswer::Stale {
                current_hash: "h".into(),
                version: 4
            })),
            serde_json::json!({"type": "stale", "current_hash": "h", "version": 4})
        );
        assert_eq!(
            json(Answer::Unreadable(Unreadable::Rejected {
                reason: "r".into()
            })),
            serde_json::json!({"type": "rejected", "reason": "r"})
        );
        let read: DownloadAnswer = serde_json::from_value(
            serde_json::json!({"type": "file", "text": "t", "hash": "h", "version": 2}),
        )
        .unwrap();
        assert!(matches!(read, DownloadAnswer::File { version: 2, .. }));
    }

    /// The first release's messages, as its peers parse them.
    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "kebab-case")]
    #[allow(dead_code)]
    enum FirstRequest {
        Push { envelope: Envelope },
        Fetch,
        Download,
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "kebab-case")]
    #[allow(dead_code)]
    enum FirstAnswer {
        Ack { version: u64 },
        Rejected { reason: String },
    }

    #[test]
    fn a_first_release_peer_reads_what_this_build_sends() {
        let fetch = serde_json::to_value(ConfigRequest::Fetch {
            protocol: Some(PROTOCOL),
        })
        .unwrap();
        let read: FirstRequest = serde_json::from_value(fetch).unwrap();
        assert!(matches!(read, FirstRequest::Fetch), "{read:?}");
        let ack = serde_json::to_value(Answer::Push(PushAnswer::Ack {
            version: 7,
            protocol: Some(PROTOCOL),
        }))
        .unwrap();
        let read: FirstAnswer = serde_json::from_value(ack).unwrap();
        assert!(matches!(read, FirstAnswer::Ack { version: 7 }), "{read:?}");
    }

    #[test]
    fn an_edit_outcome_survives_the_wire() {
        let stale = EditError::Stale {
            current_hash: "h".into(),
            version: 9,
        };
        let back: Result<Uploaded, EditError> = UploadAnswer::from(Err(stale.clone())).into();
        assert_eq!(back, Err(stale));
        let ok = Uploaded {
            version: 2,
            hash: "x".into(),
        };
        let back: Result<Uploaded, EditError> = UploadAnswer::from(Ok(ok.clone())).into();
        assert_eq!(back, Ok(ok));
        let denied = EditError::Denied("no".into());
        let back: Result<Downloaded, EditError> = DownloadAnswer::from(Err(denied.clone())).into();
        assert_eq!(back, Err(denied));
    }
}
