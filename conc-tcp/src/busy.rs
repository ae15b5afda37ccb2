//! Connections refused by a peer's handshake caps: the peer is alive but busy (a start-up
//! storm), and the dial is retried rather than reported as a failure.
//!
//! A node with more connections in the handshake than its caps allow
//! ([`Limits::max_handshakes`](conc_wire::Limits::max_handshakes),
//! [`max_handshakes_per_ip`](conc_wire::Limits::max_handshakes_per_ip)) closes a new one at
//! once, before it sends anything. So a dial whose TCP connect succeeded (the peer's listener
//! is there) and whose connection then ended before a single byte came from the peer was
//! refused by a busy node: [`refused_by_caps`]. A dead peer refuses the TCP connect itself,
//! and a wrong cookie fails after the peer's challenge; neither is taken for busy.
//! [`BusyRetry`](conc_wire::session::BusyRetry) spaces the retries (jittered, doubling) and
//! bounds how long they go on.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use conc_wire::io::IoError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that records whether the peer sent any byte (shared flag, so the dialler can read
/// it after the stream was consumed by a failed handshake).
pub(crate) struct Watched<S> {
    inner: S,
    read_any: bool,
    flag: Arc<AtomicBool>,
}

impl<S> Watched<S> {
    /// Wraps `inner`; the returned flag turns true at the first byte read.
    pub(crate) fn new(inner: S) -> (Watched<S>, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (
            Watched {
                inner,
                read_any: false,
                flag: flag.clone(),
            },
            flag,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.read_any && buf.filled().len() > before {
            self.read_any = true;
            self.flag.store(true, Ordering::Release);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether a dial that failed with `e` after its TCP connect succeeded, with nothing read from
/// the peer (`read_any` false), was refused by the peer's handshake caps: the connection was
/// closed or reset under the dialler before the peer said a word.
pub(crate) fn refused_by_caps(e: &IoError, read_any: bool) -> bool {
    if read_any {
        return false;
    }
    match e {
        IoError::Closed => true,
        IoError::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_a_silent_close_is_busy() {
        assert!(refused_by_caps(&IoError::Closed, false));
        assert!(refused_by_caps(
            &IoError::Io(io::ErrorKind::ConnectionReset.into()),
            false
        ));
        // The peer said something first (a challenge): a failed handshake, not a busy peer.
        assert!(!refused_by_caps(&IoError::Closed, true));
        assert!(!refused_by_caps(
            &IoError::Io(io::ErrorKind::ConnectionRefused.into()),
            false
        ));
        assert!(!refused_by_caps(
            &IoError::Timeout(Duration::from_secs(1)),
            false
        ));
    }
}
