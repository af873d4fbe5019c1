//! Frames on a QUIC stream: a 4-byte big-endian length, a 1-byte kind, then
//! the payload. A length above the cap is refused before anything is
//! allocated, and a payload is read as it arrives (the buffer grows with
//! the bytes received, never to the announced length at once), so a peer
//! that announces a large frame and sends nothing holds nothing. A host
//! reads a stream's first message with `read_request`: a smaller cap and a
//! timeout, because it comes before the request is authorized.

use bytes::{Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest payload a frame may carry.
pub const MAX_FRAME: usize = 1 << 20;

/// The buffer a stream of frames is read through: a frame's header and
/// payload come from it, not from a call into the QUIC stream each.
pub const READ_BUFFER: usize = 64 * 1024;

/// How long a host waits for the first message of a stream.
pub const FIRST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A JSON control message (request, answer, exit status, signal...).
    Control = 1,
    Stdout = 2,
    Stderr = 3,
    Stdin = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Control),
            2 => Some(Kind::Stdout),
            3 => Some(Kind::Stderr),
            4 => Some(Kind::Stdin),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is larger than the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed control message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected a control message, got {0:?} data")]
    NotControl(Kind),
    #[error("stream ended before the expected message")]
    Eof,
    #[error("no request within {} s", FIRST_READ_TIMEOUT.as_secs())]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A frame's header: the payload's length (big-endian u32), then its
/// kind; a payload over `MAX_FRAME` is refused.
fn head(kind: Kind, len: usize) -> Result<[u8; 5], FrameError> {
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&(len as u32).to_be_bytes());
    head[4] = kind as u8;
    Ok(head)
}

/// Writes one frame.
pub async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    payload: &[u8],
) -> Result<(), FrameError> {
    w.write_all(&head(kind, payload.len())?).await?;
    w.write_all(payload).await?;
    Ok(())
}

/// Writes one frame to a QUIC stream, handing it `payload` itself (no
/// copy: the stream keeps the `Bytes` until they are acknowledged).
pub async fn write_chunk(
    send: &mut iroh::endpoint::SendStream,
    kind: Kind,
    payload: Bytes,
) -> Result<(), FrameError> {
    let head = head(kind, payload.len())?;
    send.write_all_chunks(&mut [Bytes::copy_from_slice(&head), payload])
        .await
        .map_err(std::io::Error::from)?;
    Ok(())
}

/// Reads a pipe in chunks for `write_chunk`: a read that fills at least
/// half the buffer is handed on as it is (no copy); a smaller one is
/// copied out and the buffer kept, so that a queue of small chunks (a
/// command that prints line by line to a slow peer) never holds a large
/// buffer for each: what is queued costs at most twice its length.
pub struct ChunkReader<R> {
    r: R,
    buf: BytesMut,
    chunk: usize,
}

impl<R: AsyncRead + Unpin> ChunkReader<R> {
    pub fn new(r: R, chunk: usize) -> ChunkReader<R> {
        ChunkReader {
            r,
            buf: BytesMut::new(),
            chunk,
        }
    }

    /// The next chunk; `None` at the end or on an error.
    pub async fn next(&mut self) -> Option<Bytes> {
        self.buf.reserve(self.chunk);
        match self.r.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) if n >= self.chunk / 2 => Some(self.buf.split().freeze()),
            Ok(_) => {
                let small = Bytes::copy_from_slice(&self.buf);
                self.buf.clear();
                Some(small)
            }
        }
    }
}

/// Writes a control message as JSON.
pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let bytes = serde_json::to_vec(msg)?;
    write(w, Kind::Control, &bytes).await
}

/// Reads one frame into `buf` (reused between calls); `None` at a clean end
/// of stream between frames.
pub async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Kind>, FrameError> {
    read_capped(r, buf, MAX_FRAME).await
}

/// `read` with a cap of `cap` bytes (at most `MAX_FRAME`).
async fn read_capped<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
) -> Result<Option<Kind>, FrameError> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    r.read_exact(&mut head[1..]).await?;
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    if len > cap.min(MAX_FRAME) {
        return Err(FrameError::TooLarge(len));
    }
    let kind = Kind::from_byte(head[4]).ok_or(FrameError::UnknownKind(head[4]))?;
    buf.clear();
    // Grows with what arrives, not with what the header announced.
    let got = (&mut *r).take(len as u64).read_to_end(buf).await?;
    if got < len {
        return Err(FrameError::Eof);
    }
    Ok(Some(kind))
}

/// Reads one frame that must be a control message of type `T`.
pub async fn read_msg<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, FrameError> {
    read_msg_capped(r, MAX_FRAME).await
}

/// A host's read of the first message of a stream, which comes before any
/// authorization: at most `cap` bytes, within `FIRST_READ_TIMEOUT`.
pub async fn read_request<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    cap: usize,
) -> Result<T, FrameError> {
    tokio::time::timeout(FIRST_READ_TIMEOUT, read_msg_capped(r, cap))
        .await
        .map_err(|_| FrameError::Timeout)?
}

async fn read_msg_capped<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    cap: usize,
) -> Result<T, FrameError> {
    let mut buf = Vec::new();
    match read_capped(r, &mut buf, cap).await? {
        Some(Kind::Control) => Ok(serde_json::from_slice(&buf)?),
        Some(other) => Err(FrameError::NotControl(other)),
        None => Err(FrameError::Eof),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_read_is_handed_on_and_a_small_one_holds_no_large_buffer() {
        const CHUNK: usize = 64 * 1024;
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut chunks = ChunkReader::new(&data[..], CHUNK);
        let mut got = Vec::new();
        while let Some(c) = chunks.next().await {
            assert!(c.len() >= CHUNK / 2, "{}", c.len());
            got.extend_from_slice(&c);
        }
        assert_eq!(got, data);

        let mut chunks = ChunkReader::new(&data[..100], CHUNK);
        let small = chunks.next().await.unwrap();
        assert_eq!(&small[..], &data[..100]);
        let owned = small.try_into_mut().expect("the chunk is its own");
        assert!(owned.capacity() < 1024, "{} bytes held", owned.capacity());
        assert!(
            chunks.buf.capacity() >= CHUNK,
            "the reader keeps its buffer"
        );
        assert!(chunks.next().await.is_none());
    }

    #[tokio::test]
    async fn round_trip_and_cap() {
        let mut wire = Vec::new();
        write(&mut wire, Kind::Stdout, b"hello").await.unwrap();
        write_msg(&mut wire, &serde_json::json!({"a": 1}))
            .await
            .unwrap();
        let mut r = &wire[..];
        let mut buf = Vec::new();
        assert_eq!(read(&mut r, &mut buf).await.unwrap(), Some(Kind::Stdout));
        assert_eq!(buf, b"hello");
        let v: serde_json::Value = read_msg(&mut r).await.unwrap();
        assert_eq!(v["a"], 1);
        assert!(read(&mut r, &mut buf).await.unwrap().is_none());

        // A header announcing 4 GiB is refused without allocating it.
        let mut huge = vec![0xff, 0xff, 0xff, 0xff, 1];
        huge.extend_from_slice(b"x");
        let err = read(&mut &huge[..], &mut buf).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)));
        assert!(buf.capacity() < MAX_FRAME);
    }

    #[tokio::test]
    async fn an_announced_frame_is_not_allocated_before_it_arrives() {
        // A header announcing a whole MAX_FRAME, then 3 bytes and silence.
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut head = (MAX_FRAME as u32).to_be_bytes().to_vec();
        head.push(Kind::Stdin as u8);
        client.write_all(&head).await.unwrap();
        client.write_all(b"abc").await.unwrap();
        let mut buf = Vec::new();
        let pending = read(&mut server, &mut buf);
        let waited = tokio::time::timeout(Duration::from_millis(50), pending).await;
        assert!(waited.is_err(), "the frame is incomplete");
        assert!(buf.capacity() < 4096, "buffer grew to {}", buf.capacity());

        // A stream that ends inside a frame is an error, not a short frame.
        let mut short = 10u32.to_be_bytes().to_vec();
        short.push(Kind::Stdin as u8);
        short.extend_from_slice(b"abc");
        let err = read(&mut &short[..], &mut buf).await.unwrap_err();
        assert!(matches!(err, FrameError::Eof), "{err:?}");
    }

    #[tokio::test]
    async fn a_request_is_capped_and_timed() {
        let mut wire = Vec::new();
        write(&mut wire, Kind::Control, &[b' '; 2000])
            .await
            .unwrap();
        let err = read_request::<_, serde_json::Value>(&mut &wire[..], 1000)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(2000)));

        tokio::time::pause();
        let (_client, mut server) = tokio::io::duplex(64);
        let err = read_request::<_, serde_json::Value>(&mut server, 1000)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Timeout));
    }
}
