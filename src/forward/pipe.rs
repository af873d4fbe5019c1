//! Bytes both ways between a TCP connection and a QUIC stream, with
//! backpressure (one buffer per direction; a slow reader stops the writer)
//! and half-close: EOF on TCP finishes the QUIC send side, and the peer's
//! finish shuts down the TCP write side, so protocols that close one
//! direction first (`psql` at the end, an HTTP client after its request)
//! work. An error on either side aborts both: the QUIC stream is reset and
//! the TCP connection closed with RST, so neither end mistakes an abort
//! for a clean end.

use std::future::Future;
use std::io;

use iroh::endpoint::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes read per step of one direction: large enough for throughput,
/// and the most one direction holds in memory.
const CHUNK: usize = 64 * 1024;

/// Bytes moved each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// From the TCP side to the QUIC stream.
    pub up: u64,
    /// From the QUIC stream to the TCP side.
    pub down: u64,
}

/// Copies until EOF; the number of bytes.
pub async fn copy<R, W>(r: &mut R, w: &mut W) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
    }
}

/// Pipes `tcp` and the stream (`send`, `recv`) until both directions ended.
pub async fn tcp_quic(
    mut tcp: TcpStream,
    mut send: SendStream,
    mut recv: RecvStream,
) -> io::Result<Moved> {
    let result = {
        let (mut tcp_r, mut tcp_w) = tcp.split();
        let up = async {
            let n = copy(&mut tcp_r, &mut send).await?;
            send.finish().map_err(io::Error::other)?;
            Ok(n)
        };
        let down = async {
            let n = copy(&mut recv, &mut tcp_w).await?;
            tcp_w.shutdown().await?;
            Ok(n)
        };
        both(up, down).await
    };
    if result.is_err() {
        let _ = send.reset(0u32.into());
        abort_tcp(&tcp);
    }
    result
}

/// Runs both directions; the first error ends both (the other future is
/// dropped, so a direction blocked on an idle peer does not hold the pipe).
pub async fn both(
    up: impl Future<Output = io::Result<u64>>,
    down: impl Future<Output = io::Result<u64>>,
) -> io::Result<Moved> {
    tokio::pin!(up, down);
    let (mut up_n, mut down_n) = (None, None);
    while up_n.is_none() || down_n.is_none() {
        tokio::select! {
            r = &mut up, if up_n.is_none() => up_n = Some(r?),
            r = &mut down, if down_n.is_none() => down_n = Some(r?),
        }
    }
    Ok(Moved {
        up: up_n.unwrap_or_default(),
        down: down_n.unwrap_or_default(),
    })
}

/// Makes the coming close of `tcp` an RST rather than a FIN.
pub fn abort_tcp(tcp: &TcpStream) {
    let _ = tcp.set_zero_linger();
}
