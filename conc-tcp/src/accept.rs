//! The accept side shared by both TCP modes: binding and the listener loop.

use std::net::SocketAddr;
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
