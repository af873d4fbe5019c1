//! The exec host's side of a recording: `open` asks the recorder to take
//! one (and, for `required`, the session does not start unless it does);
//! `Tap`s turn the session's bytes into timed events; one task writes them
//! to the recorder in order, with backpressure (a slow recorder slows the
//! session, it never grows a buffer); `end` writes the exit and waits,
//! briefly, until the recorder has stored it all.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::{FromRecorder, Header, Session, ToRecorder, Utf8Carry};
use crate::cluster::Cluster;
use crate::command::WindowSize;
use crate::p2p::{RECORD_ALPN, frame};

/// Events in flight to the recorder.
const QUEUE: usize = 64;
/// How long the host waits for the recorder: to accept, and to have
/// stored the end.
const WAIT: Duration = Duration::from_secs(5);

/// A recording the recorder accepted.
pub struct Recording {
    pub id: String,
    /// Keystrokes are recorded too (`record_input`).
    pub input: bool,
    tx: mpsc::Sender<ToRecorder>,
    start: Instant,
    /// Set when the stream to the recorder broke: why.
    broken: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

/// One stream of a session (`o`, `e` or `i`) as timed events.
pub struct Tap {
    kind: &'static str,
    tx: mpsc::Sender<ToRecorder>,
    start: Instant,
    carry: Utf8Carry,
}

impl Tap {
    /// Records `bytes`; false once the recording is gone.
    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        let text = self.carry.push(bytes);
        if text.is_empty() {
            return true;
        }
        let event = ToRecorder::Event {
            t: self.start.elapsed().as_secs_f64(),
            kind: self.kind.to_owned(),
            text,
        };
        self.tx.send(event).await.is_ok()
    }

    /// A PTY's new size (an `r` event, `COLSxROWS`).
    pub async fn resize(&mut self, size: WindowSize) -> bool {
        let event = ToRecorder::Event {
            t: self.start.elapsed().as_secs_f64(),
            kind: "r".to_owned(),
            text: format!("{}x{}", size.cols, size.rows),
        };
        self.tx.send(event).await.is_ok()
    }
}

/// Asks the cluster's recorder to take a recording of `session`, of a
/// terminal of `size` (a PTY's; 80x24 otherwise).
pub async fn open(
    cluster: &Cluster,
    session: Session,
    size: Option<WindowSize>,
) -> Result<Recording, String> {
    let config = cluster
        .config()
        .ok_or_else(|| "this machine has no config".to_owned())?;
    let (id, addrs) = match &config.recorder {
        Some(name) => {
            let m = config
                .machines
                .get(name)
                .ok_or_else(|| format!("recorder {name:?} is not a machine of the config"))?;
            (m.id52, m.addrs.clone())
        }
        None => (cluster.cm_id52(), cluster.cm_addrs()),
    };
    let input = session.input;
    let size = size.unwrap_or(WindowSize { rows: 24, cols: 80 });
    let header = Header {
        version: 2,
        width: size.cols,
        height: size.rows,
        timestamp: crate::state::unix_now(),
        title: Some(format!(
            "{} on {}.{}",
            title(&session.argv),
            session.machine,
            session.cluster
        )),
        malai: session,
    };
    let begin = async {
        if id == cluster.id52() {
            return super::store::begin_here(cluster, header).await;
        }
        let conn = cluster
            .pool()
            .get(cluster.endpoint(), &id, &addrs, RECORD_ALPN)
            .await
            .map_err(|e| format!("cannot reach the recorder: {e:#}"))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("the recorder: {e}"))?;
        frame::write_msg(&mut send, &ToRecorder::Begin { header })
            .await
            .map_err(|e| format!("the recorder: {e}"))?;
        match frame::read_msg(&mut recv).await {
            Ok(FromRecorder::Accepted { id }) => Ok((id, super::store::Sink::Remote(send, recv))),
            Ok(FromRecorder::Refused { reason }) => Err(format!("the recorder refused: {reason}")),
            Err(e) => Err(format!("the recorder did not answer: {e}")),
        }
    };
    let (id, sink) = tokio::time::timeout(WAIT, begin)
        .await
        .map_err(|_| format!("the recorder did not answer within {} s", WAIT.as_secs()))??;
    let (tx, rx) = mpsc::channel(QUEUE);
    let (broke, broken) = watch::channel(None);
    let task = tokio::spawn(async move {
        if let Err(e) = sink.run(rx).await {
            let _ = broke.send(Some(e));
        }
    });
    Ok(Recording {
        id,
        input,
        tx,
        start: Instant::now(),
        broken,
        task,
    })
}

impl Recording {
    /// A tap for events of `kind` (`o`, `e`, `i`).
    pub fn tap(&self, kind: &'static str) -> Tap {
        Tap {
            kind,
            tx: self.tx.clone(),
            start: self.start,
            carry: Utf8Carry::default(),
        }
    }

    /// Resolves with the reason when the stream to the recorder broke.
    pub fn broken(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut broken = self.broken.clone();
        async move {
            let why = match broken.wait_for(Option::is_some).await {
                Ok(why) => why.clone(),
                Err(_) => None,
            };
            match why {
                Some(why) => why,
                // The task ended cleanly: never resolves.
                None => std::future::pending().await,
            }
        }
    }

    /// Records the end and waits (up to `WAIT`) until the recorder stored
    /// it; the reason when it did not.
    pub async fn end(self, exit: Option<u8>) -> Result<(), String> {
        let Recording {
            tx, broken, task, ..
        } = self;
        let sent = tx.send(ToRecorder::End { exit }).await.is_ok();
        drop(tx);
        match tokio::time::timeout(WAIT, task).await {
            Err(_) => Err("the recorder did not confirm the end in time".into()),
            Ok(_) => match broken.borrow().clone() {
                Some(why) => Err(why),
                None if !sent => Err("the recording had ended already".into()),
                None => Ok(()),
            },
        }
    }
}

/// A recording's title: the argv as a command line, or "shell".
pub fn title(argv: &[String]) -> String {
    if argv.is_empty() {
        "shell".to_owned()
    } else {
        shell_words::join(argv)
    }
}
