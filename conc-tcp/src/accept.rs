//! The accept side shared by both TCP modes: the listener loop and the caps on connections
//! still in the handshake (overall and per source address).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Counts connections that have not finished the handshake.
pub(crate) struct HandshakeGate {
    overall: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// Held while a connection is in the handshake; releases its places when dropped.
pub(crate) struct GatePass<'a> {
    gate: &'a HandshakeGate,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl HandshakeGate {
    pub(crate) fn new(max: usize, max_per_ip: usize) -> Self {
        HandshakeGate {
            overall: Arc::new(Semaphore::new(max.max(1))),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip: max_per_ip.max(1),
        }
    }

    /// A place for a connection from `ip`, or `None` if a cap is reached.
    pub(crate) fn enter(&self, ip: IpAddr) -> Option<GatePass<'_>> {
        let permit = self.overall.clone().try_acquire_owned().ok()?;
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(GatePass {
            gate: self,
            ip,
            _permit: permit,
        })
    }
}

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        let mut per_ip = self.gate.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

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
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    stop: Arc<tokio::sync::Notify>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) + Send + 'static,
{
    loop {
        tokio::select! {
            _ = stop.notified() => return,
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
