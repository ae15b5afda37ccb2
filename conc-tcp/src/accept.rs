//! The accept side shared by both TCP modes: binding and the listener loop.

use std::net::SocketAddr;
use std::sync::Mutex;

use conc_wire::TransportError;
use tokio_util::sync::CancellationToken;

use tokio::net::{TcpListener, TcpStream};

/// Binds `addr` with address reuse (so a restarted node can bind its port again at once).
pub(crate) async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(1024)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("no address for {addr}"))))
}

/// The listener a TCP transport binds in `Transport::bind` and takes in `Transport::start`.
#[derive(Debug, Default)]
pub(crate) struct ListenerSlot(Mutex<Option<TcpListener>>);

impl ListenerSlot {
    /// Binds `listen` (see [`bind`]) and keeps the listener for [`take`](ListenerSlot::take).
    pub(crate) async fn bind(&self, listen: &str) -> Result<SocketAddr, TransportError> {
        let failed = |source| TransportError::Bind {
            addr: listen.to_string(),
            source,
        };
        let listener = bind(listen).await.map_err(failed)?;
        let local = listener.local_addr().map_err(failed)?;
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
        Ok(local)
    }

    /// The bound listener, if `bind` was called (once).
    pub(crate) fn take(&self) -> Option<TcpListener> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Accepts connections until the listener fails or `stop` fires; hands each to `handle`.
pub(crate) async fn accept_loop<F>(listener: TcpListener, stop: CancellationToken, handle: F)
where
    F: Fn(TcpStream, SocketAddr) + Send + 'static,
{
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            res = listener.accept() => match res {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    handle(stream, remote);
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}
