//! A fan-out's output: each machine's stdout and stderr read line by line
//! and written to this process's stdout and stderr with `MACHINE: ` in
//! front, one whole line per write under one lock, so lines of different
//! machines never mix; or kept (bounded) for `--json`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// A line longer than this is cut into pieces of this size, each prefixed.
const MAX_LINE: usize = 16 * 1024;
/// What `--json` keeps of one stream of one machine.
pub const MAX_KEPT: usize = 4 * 1024 * 1024;

/// Which stream of this process a machine's stream goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where the lines go: printed with their machine's prefix, or kept.
#[derive(Debug, Clone)]
pub enum Sink {
    Print(Arc<Mutex<()>>),
    Keep,
}

impl Sink {
    pub fn print() -> Sink {
        Sink::Print(Arc::new(Mutex::new(())))
    }
}

/// What was kept of one stream (nothing when printed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    pub bytes: Vec<u8>,
    /// More came than `MAX_KEPT`; the rest was dropped.
    pub truncated: bool,
}

impl Kept {
    pub fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.truncated {
            text.push_str("\n[malai: output truncated]\n");
        }
        text
    }
}

/// Reads `input` to its end and sends each line to `sink` as `machine`'s
/// `stream`; a last line without a newline gets one.
pub async fn pump(
    mut input: impl AsyncRead + Unpin,
    machine: &str,
    stream: Stream,
    sink: &Sink,
) -> Kept {
    let prefix = format!("{machine}: ");
    let mut kept = Kept::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if n == 0 {
            if !pending.is_empty() {
                pending.push(b'\n');
                emit(&prefix, &pending, stream, sink, &mut kept);
            }
            return kept;
        }
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(end) = next_line_end(&pending[start..]) {
            emit(
                &prefix,
                &pending[start..start + end],
                stream,
                sink,
                &mut kept,
            );
            start += end;
        }
        pending.drain(..start);
    }
}

/// The length of the first line of `bytes` with its newline, or `MAX_LINE`
/// when none ends within it.
fn next_line_end(bytes: &[u8]) -> Option<usize> {
    match bytes.iter().take(MAX_LINE).position(|b| *b == b'\n') {
        Some(i) => Some(i + 1),
        None if bytes.len() >= MAX_LINE => Some(MAX_LINE),
        None => None,
    }
}

fn emit(prefix: &str, line: &[u8], stream: Stream, sink: &Sink, kept: &mut Kept) {
    match sink {
        Sink::Keep => {
            let room = MAX_KEPT.saturating_sub(kept.bytes.len());
            kept.bytes.extend_from_slice(&line[..line.len().min(room)]);
            kept.truncated |= line.len() > room;
        }
        Sink::Print(lock) => {
            let mut whole = Vec::with_capacity(prefix.len() + line.len() + 1);
            whole.extend_from_slice(prefix.as_bytes());
            whole.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                whole.push(b'\n');
            }
            let _held = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // One write of the whole line; a closed stdout (`| head`) only
            // stops this machine's output.
            let _ = match stream {
                Stream::Stdout => std::io::stdout().lock().write_all(&whole),
                Stream::Stderr => std::io::stderr().lock().write_all(&whole),
            };
        }
    }
}

/// The pumps of one machine's stdout and stderr.
pub struct Pumps([tokio::task::JoinHandle<Kept>; 2]);

impl Pumps {
    /// Pumps `stdout` and `stderr` of `machine` into `sink`.
    pub fn start(
        stdout: impl AsyncRead + Unpin + Send + 'static,
        stderr: impl AsyncRead + Unpin + Send + 'static,
        machine: &str,
        sink: &Sink,
    ) -> Pumps {
        let spawn = |input: Box<dyn AsyncRead + Unpin + Send>, stream| {
            let (machine, sink) = (machine.to_owned(), sink.clone());
            tokio::spawn(async move { pump(input, &machine, stream, &sink).await })
        };
        Pumps([
            spawn(Box::new(stdout), Stream::Stdout),
            spawn(Box::new(stderr), Stream::Stderr),
        ])
    }

    /// What was kept, once both streams ended.
    pub async fn finish(self) -> (Kept, Kept) {
        let [out, err] = self.0;
        (out.await.unwrap_or_default(), err.await.unwrap_or_default())
    }

    /// Stops reading (a command left behind may hold its streams open).
    pub fn abort(&self) {
        for p in &self.0 {
            p.abort();
        }
    }
}

/// In-process pipes for a command on another machine: the ends it writes
/// stdout and stderr into, and the pumps on the other ends.
pub fn duplex(
    machine: &str,
    sink: &Sink,
) -> (tokio::io::DuplexStream, tokio::io::DuplexStream, Pumps) {
    let (out_w, out_r) = tokio::io::duplex(64 * 1024);
    let (err_w, err_r) = tokio::io::duplex(64 * 1024);
    (out_w, err_w, Pumps::start(out_r, err_r, machine, sink))
}

/// OS pipes for a command that writes to descriptors (this device's own,
/// or one a daemon runs for this process): the write ends, and the pumps.
pub fn pipes(
    machine: &str,
    sink: &Sink,
) -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd, Pumps)> {
    use tokio::net::unix::pipe::Receiver;
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (out_r, out_w) = nix::unistd::pipe2(cloexec)?;
    let (err_r, err_w) = nix::unistd::pipe2(cloexec)?;
    let pumps = Pumps::start(
        Receiver::from_owned_fd(out_r)?,
        Receiver::from_owned_fd(err_r)?,
        machine,
        sink,
    );
    Ok((out_w, err_w, pumps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_kept_whole_and_a_last_line_gets_its_newline() {
        let kept = pump(
            &b"one\ntwo\nthree"[..],
            "web01",
            Stream::Stdout,
            &Sink::Keep,
        )
        .await;
        assert_eq!(kept.bytes, b"one\ntwo\nthree\n");
        assert!(!kept.truncated);
    }

    #[tokio::test]
    async fn a_long_line_is_cut_and_what_is_kept_is_bounded() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let kept = pump(&long[..], "m", Stream::Stdout, &Sink::Keep).await;
        assert_eq!(kept.bytes.len(), long.len() + 1);
        let huge = vec![b'y'; MAX_KEPT + 10];
        let kept = pump(&huge[..], "m", Stream::Stdout, &Sink::Keep).await;
        assert_eq!(kept.bytes.len(), MAX_KEPT);
        assert!(kept.truncated && kept.text().ends_with("truncated]\n"));
    }
}
