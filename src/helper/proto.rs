//! What the daemon and the helper say on the helper's socket: one
//! connection per command. The daemon sends a `Request` with the command's
//! stdin, stdout and stderr attached (`SCM_RIGHTS`; none for a PTY); the
//! helper answers `Started` (with the PTY's master side attached),
//! `Refused` or `Failed`, then `Exited`. Meanwhile the daemon may send
//! `Signal`s; closing the connection kills the command.
//!
//! Frames: a 4-byte big-endian length, then JSON; at most `MAX_FRAME`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::command::WindowSize;

/// The largest frame: a request carries at most an argv the exec host
/// took (256 KiB) and a short environment.
pub const MAX_FRAME: usize = 512 * 1024;

/// Descriptors one message may carry.
const MAX_FDS: usize = 3;

/// The daemon's request: what a peer asked, never what to run; the helper
/// decides what runs from the signed config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub cluster: String,
    /// The config version the daemon decided with (logged).
    pub config_version: u64,
    /// The peer's id52, as the daemon's connection authenticated it; this
    /// device's own for a local user's command.
    pub peer: String,
    /// The argv the peer asked for; empty for a shell.
    pub argv: Vec<String>,
    pub pty: Option<WindowSize>,
    /// The client's TERM, LANG and LC_* (filtered again).
    pub env: Vec<(String, String)>,
    /// A local user who asked the daemon over D-Bus to run this on the
    /// device itself: what no command rule grants runs as that user.
    pub local_uid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Answer {
    /// Running in this unit (with a PTY, its master side is attached).
    Started { unit: String },
    /// The signed config does not allow it.
    Refused { reason: String },
    /// Allowed, but it could not be started.
    Failed { reason: String },
    /// It ended: its exit code, or 128+N for signal N.
    Exited { code: u8 },
}

/// From the daemon while the command runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Deliver this signal to every process of the command.
    Signal { signal: i32 },
}

/// Sends one frame with `fds` attached to its first byte.
pub async fn send<T: Serialize>(
    stream: &UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let body = serde_json::to_vec(msg)?;
    let mut frame = u32::try_from(body.len())
        .map_err(|_| io::Error::other("frame too large"))?
        .to_be_bytes()
        .to_vec();
    frame.extend(body);
    let mut sent = 0;
    while sent < frame.len() {
        stream.writable().await?;
        let attach = if sent == 0 { fds } else { &[] };
        match stream.try_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut ancillary = SendAncillaryBuffer::new(&mut space);
            if !attach.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(attach)) {
                return Err(io::Error::other("too many descriptors for one message"));
            }
            rustix::net::sendmsg(
                stream.as_fd(),
                &[IoSlice::new(&frame[sent..])],
                &mut ancillary,
                SendFlags::NOSIGNAL,
            )
            .map_err(io::Error::from)
        }) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads frames and the descriptors that come with them.
#[derive(Default)]
pub struct Receiver {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Receiver {
    /// The next frame and every descriptor received with it; `None` when
    /// the other side closed between frames.
    pub async fn recv<T: DeserializeOwned>(
        &mut self,
        stream: &UnixStream,
    ) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                if len > MAX_FRAME {
                    return Err(io::Error::other(format!(
                        "a frame of {len} bytes is over the limit of {MAX_FRAME}"
                    )));
                }
                if self.buf.len() >= 4 + len {
                    let msg = serde_json::from_slice(&self.buf[4..4 + len])?;
                    self.buf.drain(..4 + len);
                    return Ok(Some((msg, std::mem::take(&mut self.fds))));
                }
            }
            stream.readable().await?;
            let mut chunk = [0u8; 16 * 1024];
            let got = stream.try_io(Interest::READABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut ancillary = RecvAncillaryBuffer::new(&mut space);
                let msg = rustix::net::recvmsg(
                    stream.as_fd(),
                    &mut [IoSliceMut::new(&mut chunk)],
                    &mut ancillary,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut fds = Vec::new();
                for m in ancillary.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = m {
                        fds.extend(rights);
                    }
                }
                Ok((msg.bytes, fds))
            });
            let (n, fds) = match got {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            if self.fds.len() + fds.len() > MAX_FDS {
                return Err(io::Error::other("too many descriptors"));
            }
            self.fds.extend(fds);
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed inside a frame",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn frames_carry_their_descriptors_and_nothing_else() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut r, mut w) = std::io::pipe().unwrap();
        let req = Control::Signal { signal: 2 };
        send(&a, &req, &[w.as_fd()]).await.unwrap();
        send(&a, &Answer::Exited { code: 3 }, &[]).await.unwrap();
        let mut rx = Receiver::default();
        let (got, fds): (Control, _) = rx.recv(&b).await.unwrap().unwrap();
        assert_eq!(got, req);
        assert_eq!(fds.len(), 1);
        // The descriptor received is the pipe's write end.
        let mut passed = std::fs::File::from(fds.into_iter().next().unwrap());
        passed.write_all(b"through").unwrap();
        drop(passed);
        w.flush().unwrap();
        drop(w);
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through");
        let (got, fds): (Answer, _) = rx.recv(&b).await.unwrap().unwrap();
        assert_eq!((got, fds.len()), (Answer::Exited { code: 3 }, 0));
        drop(a);
        assert!(rx.recv::<Answer>(&b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_it_is_read() {
        let (a, b) = UnixStream::pair().unwrap();
        a.try_write(&(MAX_FRAME as u32 + 1).to_be_bytes()).unwrap();
        let err = Receiver::default().recv::<Answer>(&b).await.unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
    }
}
