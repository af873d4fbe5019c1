//! Frames on a QUIC stream: a 4-byte big-endian length, a 1-byte kind, then
//! the payload. A length above `MAX_FRAME` is refused before anything is
//! allocated, so a peer cannot make us buffer more than that.

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest payload a frame may carry.
pub const MAX_FRAME: usize = 1 << 20;

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
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Writes one frame.
pub async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    payload: &[u8],
) -> Result<(), FrameError> {
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(payload.len()));
    }
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    head[4] = kind as u8;
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    Ok(())
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
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    r.read_exact(&mut head[1..]).await?;
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let kind = Kind::from_byte(head[4]).ok_or(FrameError::UnknownKind(head[4]))?;
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(Some(kind))
}

/// Reads one frame that must be a control message of type `T`.
pub async fn read_msg<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, FrameError> {
    let mut buf = Vec::new();
    match read(r, &mut buf).await? {
        Some(Kind::Control) => Ok(serde_json::from_slice(&buf)?),
        Some(other) => Err(FrameError::NotControl(other)),
        None => Err(FrameError::Eof),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
