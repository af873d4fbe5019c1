//! An invite ticket: everything a fresh device needs to join a cluster,
//! in one line to paste. The cluster's name, the CM's id52 and how to
//! reach it (addresses, the cluster's relay and its CA), the invite's id,
//! and its secret (the CM keeps only the secret's hash). Written as
//! `malai-invite-1:` and base64url of JSON, so that a shell, a chat window
//! or an email keep it whole.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::identity::Id52;

const PREFIX: &str = "malai-invite-1:";
/// The longest ticket read (a relay CA is the bulk of it).
const MAX_TICKET: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ticket {
    /// The cluster's name on the CM: the joining device's default alias.
    pub cluster: String,
    pub cm: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ca: Option<String>,
    /// The invite's id: named in logs and in `invite --list`.
    pub invite: String,
    /// 32 random bytes, hex.
    pub secret: String,
}

impl Ticket {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a ticket serializes");
        format!("{PREFIX}{}", data_encoding::BASE64URL_NOPAD.encode(&json))
    }

    /// Reads a ticket as `encode` wrote it (blanks around it ignored).
    pub fn decode(text: &str) -> Result<Ticket, String> {
        let text = text.trim();
        if text.len() > MAX_TICKET {
            return Err("this is too long to be a malai invite ticket".into());
        }
        let body = text.strip_prefix(PREFIX).ok_or_else(|| {
            format!("not a malai invite ticket (they start with {PREFIX:?}); copy the whole line `malai cluster invite` printed")
        })?;
        let json = data_encoding::BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|_| {
                "the ticket is damaged (not base64url): copy the whole line again".to_owned()
            })?;
        let ticket: Ticket =
            serde_json::from_slice(&json).map_err(|e| format!("the ticket is damaged: {e}"))?;
        ticket
            .cm
            .parse::<Id52>()
            .map_err(|e| format!("the ticket's cluster manager id52: {e}"))?;
        Ok(ticket)
    }

    pub fn cm_id52(&self) -> Id52 {
        self.cm.parse().expect("checked by decode")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_survives_its_text_and_damage_is_named() {
        let t = Ticket {
            cluster: "company".into(),
            cm: crate::identity::Identity::generate().id52().to_string(),
            addrs: vec!["127.0.0.1:7700".parse().unwrap()],
            relay: Some("https://relay.example.com".into()),
            relay_ca: None,
            invite: "ab12cd34".into(),
            secret: "00".repeat(32),
        };
        let text = t.encode();
        assert!(!text.contains(char::is_whitespace));
        assert_eq!(Ticket::decode(&format!("  {text}\n")), Ok(t));
        assert!(
            Ticket::decode("hello")
                .unwrap_err()
                .contains("not a malai invite")
        );
        assert!(
            Ticket::decode(&text[..text.len() - 3])
                .unwrap_err()
                .contains("damaged")
        );
    }
}
