//! The recorder's side: `malai/record/1` takes recordings from the
//! machines of the cluster (each only of its own sessions) when this
//! device is the cluster's recorder, and writes each to
//! `clusters/CLUSTER/recordings/ID.cast` (0600 in a 0700 directory, a new
//! file each time, synced at the end). What `malai recordings list|play`
//! read. Bounded: a frame cap, 1 GiB per recording, 64 at once per peer.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use tokio::sync::mpsc;

use super::{FromRecorder, Header, KINDS, ToRecorder};
use crate::cluster::Cluster;
use crate::fsutil;
use crate::identity::Id52;
use crate::p2p::frame;

/// The directory of a cluster's recordings, in its cluster directory.
pub const DIR: &str = "recordings";
/// The most one recording may hold.
const MAX_BYTES: u64 = 1 << 30;
/// Recordings one peer may stream at once.
const MAX_PER_PEER: usize = 64;
/// The most a `Begin` may take.
const MAX_BEGIN: usize = 64 * 1024;

/// Where a recording's events go: to the recorder over its stream, or,
/// when this device is the recorder, to the file.
pub enum Sink {
    Remote(SendStream, RecvStream),
    Local(Writer),
}

impl Sink {
    /// Writes every event of `rx` until `End`; the reason it could not.
    pub async fn run(self, mut rx: mpsc::Receiver<ToRecorder>) -> Result<(), String> {
        match self {
            Sink::Remote(mut send, mut recv) => {
                while let Some(msg) = rx.recv().await {
                    let end = matches!(msg, ToRecorder::End { .. });
                    frame::write_msg(&mut send, &msg)
                        .await
                        .map_err(|e| format!("the recorder: {e}"))?;
                    if end {
                        break;
                    }
                }
                send.finish().map_err(|e| format!("the recorder: {e}"))?;
                // The recorder ends its side once the end is stored.
                match frame::read(&mut recv, &mut Vec::new()).await {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => Err("the recorder sent more than expected".into()),
                    Err(e) => Err(format!("the recorder did not confirm: {e}")),
                }
            }
            Sink::Local(mut w) => {
                while let Some(msg) = rx.recv().await {
                    match msg {
                        ToRecorder::Event { t, kind, text } => w.event(t, &kind, &text)?,
                        ToRecorder::End { exit } => return fsutil::blocking(|| w.end(exit)),
                        ToRecorder::Begin { .. } => return Err("a second begin".into()),
                    }
                }
                fsutil::blocking(|| w.end(None))
            }
        }
    }
}

/// One recording being written.
pub struct Writer {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    bytes: u64,
}

impl Writer {
    /// A new recording file in `cluster_dir` with `header`; its id.
    pub fn create(cluster_dir: &Path, header: &Header) -> Result<(String, Writer), String> {
        let dir = cluster_dir.join(DIR);
        // A directory of our own, never a link planted in its place (the
        // file is then opened without following one either).
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", dir.display())),
            Err(_) => crate::fsutil::create_dir_durable(&dir, 0o700)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?,
        }
        let mut nonce = [0u8; 4];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness from the kernel: {e}"))?;
        let id = format!(
            "{}-{}-{:08x}",
            header.timestamp,
            header.malai.machine,
            u32::from_be_bytes(nonce)
        );
        let path = dir.join(format!("{id}.cast"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut w = Writer {
            file: std::io::BufWriter::new(file),
            path,
            bytes: 0,
        };
        let line = serde_json::to_string(header).map_err(|e| e.to_string())?;
        w.line(&line)?;
        Ok((id, w))
    }

    fn line(&mut self, line: &str) -> Result<(), String> {
        self.bytes += line.len() as u64 + 1;
        if self.bytes > MAX_BYTES {
            return Err(format!("the recording is over {MAX_BYTES} bytes"));
        }
        writeln!(self.file, "{line}").map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// One event, checked: a known kind at a time since the start.
    pub fn event(&mut self, t: f64, kind: &str, text: &str) -> Result<(), String> {
        if !KINDS.contains(&kind) || !t.is_finite() || t < 0.0 {
            return Err(format!("not an event: {kind:?} at {t}"));
        }
        let line = serde_json::to_string(&(t, kind, text)).map_err(|e| e.to_string())?;
        self.line(&line)
    }

    /// The end: synced to disk.
    pub fn end(mut self, exit: Option<u8>) -> Result<(), String> {
        if let Some(code) = exit {
            tracing::debug!(path = %self.path.display(), "recording ends with exit {code}");
        }
        self.file
            .flush()
            .and_then(|()| self.file.get_ref().sync_all())
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

/// Whether `cluster`'s device is its recorder now.
fn is_recorder(cluster: &Cluster) -> Result<(), String> {
    let config = cluster.config().ok_or("this device has no config")?;
    let me = cluster.id52();
    let recorder = match &config.recorder {
        Some(name) => config.machines.get(name).map(|m| m.id52),
        None => Some(cluster.cm_id52()),
    };
    if recorder == Some(me) {
        Ok(())
    } else {
        Err("this device is not the cluster's recorder".into())
    }
}

/// A recording of this device's own session, when it is the recorder.
pub async fn begin_here(cluster: &Cluster, header: Header) -> Result<(String, Sink), String> {
    is_recorder(cluster)?;
    let (id, w) = fsutil::blocking(|| Writer::create(cluster.dir(), &header))?;
    Ok((id, Sink::Local(w)))
}

/// `malai/record/1` for one cluster.
#[derive(Debug, Clone)]
pub struct RecordHandler {
    cluster: Arc<Cluster>,
    open: Arc<Mutex<HashMap<Id52, usize>>>,
}

impl RecordHandler {
    pub fn new(cluster: Arc<Cluster>) -> RecordHandler {
        RecordHandler {
            cluster,
            open: Arc::default(),
        }
    }
}

impl ProtocolHandler for RecordHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = Id52::from_public_key(conn.remote_id());
        while let Ok((mut send, recv)) = conn.accept_bi().await {
            let Some(permit) = self.cluster.gate().admit_stream(peer, &mut send) else {
                continue;
            };
            let (cluster, open) = (self.cluster.clone(), self.open.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = take(&cluster, &open, peer, send, recv).await {
                    tracing::warn!(malai_cluster = %cluster.alias(), malai_peer = %peer, "recording from {peer}: {e}");
                }
            });
        }
        Ok(())
    }
}

/// Takes one recording from `peer`.
async fn take(
    cluster: &Cluster,
    open: &Mutex<HashMap<Id52, usize>>,
    peer: Id52,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), String> {
    let begin: ToRecorder = frame::read_request(&mut recv, MAX_BEGIN)
        .await
        .map_err(|e| e.to_string())?;
    let ToRecorder::Begin { header } = begin else {
        return Err("the first message was not a begin".into());
    };
    let refuse = |reason: String| FromRecorder::Refused { reason };
    let config = cluster.config();
    let machine = config
        .as_ref()
        .and_then(|c| c.machine_by_id52(&peer).map(|(alias, _)| alias.to_owned()));
    let verdict = match (is_recorder(cluster), machine) {
        (Err(why), _) => Err(why),
        (Ok(()), None) => Err("only a machine of the cluster sends recordings".into()),
        (Ok(()), Some(alias))
            if alias != header.malai.machine || header.malai.cluster != cluster.alias() =>
        {
            Err(format!(
                "machine {alias} may send recordings of its own sessions only, not of {}.{}",
                header.malai.machine, header.malai.cluster
            ))
        }
        (Ok(()), Some(_)) => {
            let mut open = open.lock().expect("open lock");
            let n = open.entry(peer).or_default();
            if *n >= MAX_PER_PEER {
                Err(format!(
                    "{MAX_PER_PEER} recordings of this machine are open already"
                ))
            } else {
                *n += 1;
                Ok(())
            }
        }
    };
    if let Err(why) = verdict {
        let _ = frame::write_msg(&mut send, &refuse(why.clone())).await;
        let _ = send.finish();
        return Err(why);
    }
    let result = store(cluster, &header, &mut send, &mut recv).await;
    if let Some(n) = open.lock().expect("open lock").get_mut(&peer) {
        *n -= 1;
    }
    result
}

/// Writes the recording of `header` from `recv` until its end.
async fn store(
    cluster: &Cluster,
    header: &Header,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Result<(), String> {
    let (id, mut w) = match fsutil::blocking(|| Writer::create(cluster.dir(), header)) {
        Ok(created) => created,
        Err(why) => {
            let _ = frame::write_msg(
                send,
                &FromRecorder::Refused {
                    reason: why.clone(),
                },
            )
            .await;
            return Err(why);
        }
    };
    frame::write_msg(send, &FromRecorder::Accepted { id: id.clone() })
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        malai_cluster = %cluster.alias(), malai_recording = %id, malai_peer = %header.malai.peer,
        "recording {id}: {} on {}", super::send::title(&header.malai.argv), header.malai.machine
    );
    loop {
        match frame::read_msg::<_, ToRecorder>(recv).await {
            Ok(ToRecorder::Event { t, kind, text }) => w.event(t, &kind, &text)?,
            Ok(ToRecorder::End { exit }) => {
                fsutil::blocking(|| w.end(exit))?;
                send.finish().map_err(|e| e.to_string())?;
                let _ = send.stopped().await;
                return Ok(());
            }
            Ok(ToRecorder::Begin { .. }) => return Err("a second begin".into()),
            Err(e) => {
                let _ = fsutil::blocking(|| w.end(None));
                return Err(format!("recording {id} ended without its end: {e}"));
            }
        }
    }
}

/// A stored recording.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub id: String,
    pub cluster: String,
    pub path: PathBuf,
    pub header: Header,
}

/// Every recording under `home`, oldest first.
pub fn list(home: &crate::home::Home) -> Vec<Entry> {
    let mut out = Vec::new();
    for cluster in home.cluster_aliases().unwrap_or_default() {
        let dir = home.cluster_dir(&cluster).join(DIR);
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        for f in files.flatten() {
            let path = f.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".cast"))
                .map(str::to_owned)
            else {
                continue;
            };
            let Some(header) = read_header(&path) else {
                continue;
            };
            out.push(Entry {
                id,
                cluster: cluster.clone(),
                path,
                header,
            });
        }
    }
    // By start, then (within one second) by when each was last written.
    let key = |e: &Entry| {
        let written = std::fs::metadata(&e.path).and_then(|m| m.modified()).ok();
        (e.header.timestamp, written, e.id.clone())
    };
    out.sort_by_cached_key(key);
    out
}

fn read_header(path: &Path) -> Option<Header> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(path).ok()?;
    let mut first = String::new();
    std::io::BufReader::new(file).read_line(&mut first).ok()?;
    serde_json::from_str(&first).ok()
}
