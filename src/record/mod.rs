//! Session recording: an exec host streams what a recorded session shows
//! (and, with `record_input`, what is typed) to the cluster's recorder
//! (`recorder = "MACHINE"`, by default the CM) over `malai/record/1`, so a
//! recording is not kept only where a root session could delete it. The
//! recorder stores each as one file in asciicast v2, what asciinema plays:
//! a header line, then one `[seconds, kind, text]` line per event. Shells
//! and PTY commands have `o` (output), `i` (input) and `r` (resize)
//! events; other commands `o` for stdout and `e` for stderr (malai's own
//! kind, documented in the README). The header's `malai` object names the
//! cluster, the machine, the peer, the config version and the argv.
//!
//! `send` is the exec host's side, `store` the recorder's (and `malai
//! recordings`).

pub mod send;
pub mod store;

use serde::{Deserialize, Serialize};

/// Who ran what, where: the header's `malai` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub cluster: String,
    /// The alias of the machine it ran on.
    pub machine: String,
    /// The peer's id52, as iroh authenticated it.
    pub peer: String,
    pub config_version: u64,
    /// Empty for a shell.
    pub argv: Vec<String>,
    pub pty: bool,
    /// Whether keystrokes are recorded too.
    pub input: bool,
}

/// The asciicast v2 header line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    pub width: u16,
    pub height: u16,
    /// Unix seconds at the start.
    pub timestamp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub malai: Session,
}

/// Messages from the exec host to the recorder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ToRecorder {
    Begin {
        header: Header,
    },
    /// One asciicast event: seconds since the start, kind, text.
    Event {
        t: f64,
        kind: String,
        text: String,
    },
    /// The session ended: its exit code (128+N for signal N) when it had one.
    End {
        exit: Option<u8>,
    },
}

/// The recorder's answer to `Begin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum FromRecorder {
    Accepted { id: String },
    Refused { reason: String },
}

/// Event kinds a recording may hold.
pub const KINDS: &[&str] = &["o", "e", "i", "r"];

/// Bytes to text across chunk boundaries: a UTF-8 sequence cut between two
/// reads is kept for the next; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let buf = std::mem::take(&mut self.pending);
        match std::str::from_utf8(&buf) {
            Ok(text) => text.to_owned(),
            Err(e) if e.error_len().is_none() => {
                let (text, rest) = buf.split_at(e.valid_up_to());
                self.pending = rest.to_vec();
                String::from_utf8_lossy(text).into_owned()
            }
            Err(_) => String::from_utf8_lossy(&buf).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_cut_between_reads_arrives_whole() {
        let mut carry = Utf8Carry::default();
        let euro = "€".as_bytes();
        assert_eq!(carry.push(&[b'a', euro[0]]), "a");
        assert_eq!(carry.push(&euro[1..]), "€");
        assert_eq!(carry.push(&[0xff, b'b']), "\u{fffd}b");
    }
}
