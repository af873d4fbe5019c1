//! The messages of `malai/forward/1`. The client opens a bidirectional
//! stream and sends `Open` naming a service; the host answers `Ok`,
//! `Denied` or `Failed`, and after `Ok` the stream carries the connection's
//! bytes (raw for tcp, HTTP/1.1 for http) until either side finishes. The
//! peer is the id52 iroh authenticated, never a field here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a host waits for the `Open` message, and a client for the
/// answer, before giving up on the stream.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    /// The service's name in the host's config (`[service.NAME]`).
    pub service: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Answer {
    /// Connected to the service: the bytes flow from now on.
    Ok,
    /// The service's `allow_from` (or its absence here) refused the peer.
    Denied { reason: String },
    /// Allowed, but the host could not reach the service's port.
    Failed { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        let json = serde_json::to_string(&Answer::Denied {
            reason: "no".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"type":"denied","reason":"no"}"#);
        assert_eq!(
            serde_json::to_string(&Answer::Ok).unwrap(),
            r#"{"type":"ok"}"#
        );
        let open: Open = serde_json::from_str(r#"{"service":"db"}"#).unwrap();
        assert_eq!(open.service, "db");
    }
}
