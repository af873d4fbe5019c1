//! The audit log: every decision about a peer's command or service, with
//! one fixed set of fields (journald's `MALAI_*`): `malai_cluster`,
//! `malai_peer`, `malai_config_version`, `malai_decision`, `malai_argv` or
//! `malai_service`, `malai_pty`, `malai_exit` and `malai_uid` (the local
//! caller, when there is one), and `malai_claimed_uid`/`malai_claimed_user`:
//! the user on the peer's device the peer says it acts for (its claim, never
//! what is decided on). The argv is logged once, in its field,
//! shell-quoted and cut at `MAX_ARGV` bytes; a cut argv carries the blake3
//! of the whole in `malai_argv_hash`, so two long command lines can still
//! be told apart.
//!
//! Denials and refusals are what a peer can cause at will: per peer and
//! cluster, `DENIAL_BURST` lines per `DENIAL_WINDOW` are written, the rest
//! counted and the count written with the next one after the window
//! (`malai_suppressed`), so a flood cannot fill the journal or make
//! journald's own rate limit drop the lines that matter.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::identity::Id52;

/// Denial lines one peer gets per window in one cluster.
pub const DENIAL_BURST: u32 = 10;
pub const DENIAL_WINDOW: Duration = Duration::from_secs(60);
/// Peers tracked at once (members only reach here: strangers are refused
/// by the gate, whose lines are limited there).
const TRACKED: usize = 4096;

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Per (cluster, peer). A std `Mutex`: held to count, never across an
/// `.await`.
static DENIALS: LazyLock<Mutex<HashMap<(String, Id52), Window>>> = LazyLock::new(Mutex::default);

/// What to do with a denial line for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Write it, after the count of those held back since the last one.
    Log { held_back: u64 },
    /// The burst is used up: say so once, then count.
    StartCounting,
    /// Count it.
    Count,
}

/// Whether a denial line for `peer` in `cluster` is written now.
fn admit_denial(cluster: &str, peer: &Id52, now: Instant) -> Admit {
    let mut denials = DENIALS.lock().expect("denials lock");
    if denials.len() >= TRACKED {
        denials.retain(|_, w| now.duration_since(w.start) < DENIAL_WINDOW || w.suppressed > 0);
    }
    let window = denials
        .entry((cluster.to_owned(), *peer))
        .or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
    if now.duration_since(window.start) >= DENIAL_WINDOW {
        window.start = now;
        window.logged = 0;
    }
    if window.logged < DENIAL_BURST {
        window.logged += 1;
        return Admit::Log {
            held_back: std::mem::take(&mut window.suppressed),
        };
    }
    window.suppressed += 1;
    if window.suppressed == 1 {
        Admit::StartCounting
    } else {
        Admit::Count
    }
}

/// For a denial or refusal: whether to write its line, having written the
/// count of those held back before it.
fn limit(who: &Who<'_>, decision: &Decision<'_>) -> bool {
    let (Decision::Denied(_) | Decision::Refused(_)) = decision else {
        return true;
    };
    match admit_denial(who.cluster, who.peer, Instant::now()) {
        Admit::Count => false,
        Admit::StartCounting => {
            tracing::warn!(
                malai_cluster = %who.cluster,
                malai_peer = %who.peer,
                "{}: {DENIAL_BURST} denied or refused requests within {} s; the rest of this window is counted, not logged",
                who.peer,
                DENIAL_WINDOW.as_secs()
            );
            false
        }
        Admit::Log { held_back: 0 } => true,
        Admit::Log { held_back } => {
            tracing::warn!(
                malai_cluster = %who.cluster,
                malai_peer = %who.peer,
                malai_suppressed = held_back,
                "{}: {held_back} more denied or refused requests were not logged (at most {DENIAL_BURST} lines per peer every {} s)",
                who.peer,
                DENIAL_WINDOW.as_secs()
            );
            true
        }
    }
}

/// The longest argv text an audit line carries.
pub const MAX_ARGV: usize = 1024;

/// A local user of the calling device, as that device says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnBehalf {
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl OnBehalf {
    /// Local user `uid`, with its name when the system knows it.
    pub fn uid(uid: u32) -> OnBehalf {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        OnBehalf { uid, user }
    }
}

/// Who asked, where, under which config.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub cluster: &'a str,
    /// The peer iroh authenticated (the device's own id52 for a command on
    /// the device itself).
    pub peer: &'a Id52,
    pub config_version: u64,
    /// The local user who asked through the daemon, if one did.
    pub uid: Option<u32>,
    /// The user on the peer's device the peer says it acts for (its claim,
    /// logged as `malai_claimed_uid`/`malai_claimed_user`, decided on
    /// never).
    pub claimed: Option<&'a OnBehalf>,
    /// The id of the session's recording on the recorder, when recorded.
    pub recording: Option<&'a str>,
}

impl<'a> Who<'a> {
    /// The same, with the id of the session's recording.
    pub fn recorded(self, recording: Option<&'a str>) -> Who<'a> {
        Who { recording, ..self }
    }

    fn claimed_uid(&self) -> Option<u32> {
        self.claimed.map(|c| c.uid)
    }

    fn claimed_user(&self) -> Option<&str> {
        self.claimed.and_then(|c| c.user.as_deref())
    }

    /// " (for uid N, user NAME, on PEER's word)" when the peer says.
    fn for_whom(&self) -> String {
        match self.claimed {
            None => String::new(),
            Some(c) => {
                let name = c
                    .user
                    .as_deref()
                    .map(|u| format!(" ({u})"))
                    .unwrap_or_default();
                format!(
                    " on behalf of uid {}{name} on that device, as it claims",
                    c.uid
                )
            }
        }
    }
}

/// How many decisions `recent` keeps (the daemon's status page).
const RECENT: usize = 50;

static RECENT_DECISIONS: LazyLock<Mutex<std::collections::VecDeque<Recent>>> =
    LazyLock::new(Mutex::default);

/// One decision as the status page shows it: no more than the journal
/// line says, and the argv cut to 200 characters.
#[derive(Debug, Clone, Serialize)]
pub struct Recent {
    /// Seconds since the epoch.
    pub at: u64,
    pub cluster: String,
    pub peer: String,
    /// The argv, or `service NAME`.
    pub what: String,
    pub decision: &'static str,
    pub detail: String,
}

/// The last decisions of this process, oldest first.
pub fn recent() -> Vec<Recent> {
    RECENT_DECISIONS
        .lock()
        .expect("recent lock")
        .iter()
        .cloned()
        .collect()
}

fn remember(who: &Who<'_>, what: String, decision: &Decision<'_>) {
    let entry = Recent {
        at: crate::state::unix_now(),
        cluster: who.cluster.to_owned(),
        peer: who.peer.to_string(),
        what: what.chars().take(200).collect(),
        decision: decision.word(),
        detail: decision.detail().chars().take(300).collect(),
    };
    let mut all = RECENT_DECISIONS.lock().expect("recent lock");
    if all.len() == RECENT {
        all.pop_front();
    }
    all.push_back(entry);
}

/// What became of a request.
#[derive(Debug, Clone, Copy)]
pub enum Decision<'a> {
    /// The ACL refused it; the reason.
    Denied(&'a str),
    /// Allowed, but refused by a limit or a shutdown; the reason.
    Refused(&'a str),
    /// The ACL allowed it; why.
    Allowed(&'a str),
    /// Allowed, but it could not be started or reached; why.
    Failed(&'a str),
    /// It ended with this exit code (128+N for signal N).
    Exited(u8),
    /// Its client went away; it was killed. Why.
    Abandoned(&'a str),
    /// A config put in force no longer allows it; it was ended. Why.
    Revoked(&'a str),
}

impl Decision<'_> {
    fn word(&self) -> &'static str {
        match self {
            Decision::Denied(_) => "denied",
            Decision::Refused(_) => "refused",
            Decision::Allowed(_) => "allowed",
            Decision::Failed(_) => "failed",
            Decision::Exited(_) => "exited",
            Decision::Abandoned(_) => "abandoned",
            Decision::Revoked(_) => "revoked",
        }
    }

    fn exit(&self) -> Option<u8> {
        match self {
            Decision::Exited(code) => Some(*code),
            _ => None,
        }
    }

    /// The sentence for a person reading the line.
    fn detail(&self) -> String {
        match self {
            Decision::Denied(r) => format!("denied: {r}"),
            Decision::Allowed(r) => format!("allowed: {r}"),
            Decision::Failed(r) => format!("failed: {r}"),
            Decision::Refused(r) => format!("refused: {r}"),
            Decision::Exited(code) => format!("exited with {code}"),
            Decision::Abandoned(r) => {
                format!("client went away ({r}); killed its process group")
            }
            Decision::Revoked(r) => format!("ended: {r}"),
        }
    }

    fn is_warning(&self) -> bool {
        match self {
            Decision::Denied(_)
            | Decision::Refused(_)
            | Decision::Failed(_)
            | Decision::Abandoned(_)
            | Decision::Revoked(_) => true,
            Decision::Allowed(_) | Decision::Exited(_) => false,
        }
    }
}

/// One line about a command (`argv`; empty: a shell).
pub fn command(who: Who<'_>, argv: &[String], pty: bool, decision: Decision<'_>) {
    if !limit(&who, &decision) {
        return;
    }
    let (text, hash) = argv_field(argv);
    remember(&who, text.clone(), &decision);
    let detail = decision.detail();
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                malai_cluster = %who.cluster,
                malai_peer = %who.peer,
                malai_config_version = who.config_version,
                malai_decision = decision.word(),
                malai_argv = %text,
                malai_argv_hash = hash,
                malai_pty = pty,
                malai_exit = decision.exit(),
                malai_uid = who.uid,
                malai_claimed_uid = who.claimed_uid(),
                malai_claimed_user = who.claimed_user(),
                malai_recording = who.recording,
                "{}{}: {detail}", who.peer, who.for_whom()
            )
        };
    }
    if decision.is_warning() {
        line!(warn);
    } else {
        line!(info);
    }
}

/// One line about a forwarded connection to service `name`.
pub fn service(who: Who<'_>, name: &str, decision: Decision<'_>) {
    if !limit(&who, &decision) {
        return;
    }
    remember(&who, format!("service {name}"), &decision);
    let detail = decision.detail();
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                malai_cluster = %who.cluster,
                malai_peer = %who.peer,
                malai_config_version = who.config_version,
                malai_decision = decision.word(),
                malai_service = name,
                malai_uid = who.uid,
                malai_claimed_uid = who.claimed_uid(),
                malai_claimed_user = who.claimed_user(),
                "{} forwarding to service {name:?}: {detail}", who.peer
            )
        };
    }
    if decision.is_warning() {
        line!(warn);
    } else {
        line!(info);
    }
}

/// The argv as one shell-quoted text of at most `MAX_ARGV` bytes, and the
/// hash of the whole when it was cut.
fn argv_field(argv: &[String]) -> (String, Option<String>) {
    let text = shell_words::join(argv);
    if text.len() <= MAX_ARGV {
        return (text, None);
    }
    let mut end = MAX_ARGV;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let hash = blake3::hash(text.as_bytes()).to_hex().to_string();
    (format!("{}...", &text[..end]), Some(hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_limited_per_peer_and_the_rest_counted() {
        let peer = crate::identity::Identity::generate().id52();
        let other = crate::identity::Identity::generate().id52();
        let t0 = Instant::now();
        let logged = Admit::Log { held_back: 0 };
        for _ in 0..DENIAL_BURST {
            assert_eq!(admit_denial("limits", &peer, t0), logged);
        }
        assert_eq!(admit_denial("limits", &peer, t0), Admit::StartCounting);
        for _ in 0..4 {
            assert_eq!(admit_denial("limits", &peer, t0), Admit::Count);
        }
        assert_eq!(admit_denial("limits", &other, t0), logged, "per peer");
        assert_eq!(admit_denial("elsewhere", &peer, t0), logged, "per cluster");
        let later = t0 + DENIAL_WINDOW;
        assert_eq!(
            admit_denial("limits", &peer, later),
            Admit::Log { held_back: 5 },
            "the count, with the next line"
        );
        assert_eq!(admit_denial("limits", &peer, later), logged);
    }

    #[test]
    fn a_long_argv_is_cut_and_hashed() {
        let short = vec!["echo".to_owned(), "hi there".to_owned()];
        assert_eq!(argv_field(&short), ("echo 'hi there'".to_owned(), None));
        let long = vec!["echo".to_owned(), "é".repeat(2000)];
        let (text, hash) = argv_field(&long);
        assert!(text.len() <= MAX_ARGV + 3, "{}", text.len());
        assert!(text.ends_with("..."));
        let whole = shell_words::join(&long);
        assert_eq!(
            hash,
            Some(blake3::hash(whole.as_bytes()).to_hex().to_string())
        );
        // Another long argv with the same beginning has another hash.
        let other = vec!["echo".to_owned(), format!("{}x", "é".repeat(2000))];
        assert_eq!(argv_field(&other).0, text);
        assert_ne!(argv_field(&other).1, hash);
    }
}
