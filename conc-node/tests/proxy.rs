//! Stream proxies between two nodes of one OS process, once per transport: order, flush and
//! shutdown, errors of the original, backpressure (bounded bytes in flight), node loss on
//! either side, and the owner's lifecycle.

mod common;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use conc_node::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// A bound against hangs, not a performance bar.
const T: Duration = Duration::from_secs(60);

fn cookie() -> Cookie {
    Cookie::new("proxy-suite-cookie").unwrap()
}

async fn node(transport: &str) -> Node {
    Node::builder()
        .cookie(cookie())
        .listen("127.0.0.1:0")
        .transport_arc(transport_by_name(transport).unwrap())
        .start()
        .await
        .unwrap()
}

/// A proxy in a message, and the acknowledgement of its arrival.
#[derive(Serialize, Deserialize)]
struct Take<P> {
    proxy: P,
    ack: ReplyTo<()>,
}

/// Sends `proxy` from node `from` inside a message to a process on node `to`, and returns it
/// as decoded there (a proxy whose owner is remote, bound to `to`).
async fn ship<P>(from: &Node, to: &Node, proxy: P) -> P
where
    P: Serialize + DeserializeOwned + Send + 'static,
{
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!("courier-{}", N.fetch_add(1, Ordering::Relaxed));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let courier = to.spawn(move |mut inbox: Inbox<Take<P>>| async move {
        if let Some(Take { proxy, ack }) = inbox.recv().await {
            let _ = tx.send(proxy);
            let _ = ack.send(());
        }
    });
    to.register(&name, &courier).unwrap();
    let remote = from.remote::<Take<P>>(to.name(), &name).unwrap();
    remote
        .call(|ack| Take { proxy, ack }, T)
        .await
        .expect("the courier takes the proxy");
    tokio::time::timeout(T, rx).await.unwrap().unwrap()
}

/// Pseudo-random bytes (xorshift), the same for a seed.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---- originals ----

#[derive(Default)]
struct Record {
    data: Vec<u8>,
    flushes: usize,
    shutdown: bool,
}

/// Records what it is given.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Record>>);

impl Recorder {
    fn data(&self) -> Vec<u8> {
        self.0.lock().unwrap().data.clone()
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut r = self.0.lock().unwrap();
        if r.shutdown {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "shut down")));
        }
        // Accepts at most 1000 bytes a call, so the owner must loop.
        let n = buf.len().min(1000);
        r.data.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.lock().unwrap().flushes += 1;
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.lock().unwrap().shutdown = true;
        Poll::Ready(Ok(()))
    }
}

/// Accepts `left` bytes, then fails every write and flush.
struct Failing {
    left: usize,
    accepted: Arc<AtomicUsize>,
}

impl AsyncWrite for Failing {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.left == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "disk says no",
            )));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        self.accepted.fetch_add(n, Ordering::SeqCst);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[derive(Default)]
struct GateState {
    credit: usize,
    accepted: usize,
    data: Vec<u8>,
    waker: Option<Waker>,
}

/// A slow original: accepts bytes only as the test grants credit.
#[derive(Clone, Default)]
struct Gate(Arc<Mutex<GateState>>);

impl Gate {
    fn grant(&self, n: usize) {
        let mut g = self.0.lock().unwrap();
        g.credit += n;
        if let Some(w) = g.waker.take() {
            w.wake();
        }
    }
    fn accepted(&self) -> usize {
        self.0.lock().unwrap().accepted
    }
    fn data(&self) -> Vec<u8> {
        self.0.lock().unwrap().data.clone()
    }
    /// Whether a write waits for credit (bytes reached the original and are held back).
    fn waiting(&self) -> bool {
        self.0.lock().unwrap().waker.is_some()
    }
    /// Waits (bounded by `T`) until a write waits for credit.
    async fn until_waiting(&self) {
        let deadline = Instant::now() + T;
        while !self.waiting() {
            assert!(Instant::now() < deadline, "no write reached the original");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A reader that tells when it is first read from, and otherwise reads from `inner`.
struct Watched<R> {
    inner: R,
    read: Arc<tokio::sync::Notify>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Watched<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // `notify_one` keeps a permit for a waiter that comes later.
        self.read.notify_one();
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut g = self.0.lock().unwrap();
        if g.credit == 0 {
            g.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(g.credit);
        g.credit -= n;
        g.accepted += n;
        g.data.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads from `data`, counting what it hands out; fails with `InvalidData` after `fail_at`
/// bytes if set.
struct Source {
    data: Vec<u8>,
    pos: usize,
    fail_at: Option<usize>,
    produced: Arc<AtomicUsize>,
}

impl Source {
    fn new(data: Vec<u8>) -> (Source, Arc<AtomicUsize>) {
        let produced = Arc::new(AtomicUsize::new(0));
        let s = Source {
            data,
            pos: 0,
            fail_at: None,
            produced: produced.clone(),
        };
        (s, produced)
    }
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.fail_at.is_some_and(|f| self.pos >= f) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad sector",
            )));
        }
        let end = self.fail_at.unwrap_or(usize::MAX).min(self.data.len());
        // Hands out at most 3000 bytes a read.
        let n = out.remaining().min(end - self.pos).min(3000);
        let pos = self.pos;
        out.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        self.produced.fetch_add(n, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

/// Waits (bounded) for the end of a monitored owner process; returns its exit reason.
async fn ended(monitor: impl std::future::Future<Output = Down>) -> ExitReason {
    tokio::time::timeout(T, monitor)
        .await
        .expect("the owner process ends")
        .reason
}

// ---- the tests, each taking a transport name ----

/// Many writes of various sizes arrive at the original in order; one write larger than a
/// chunk is split.
async fn writes_arrive_in_order(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let rec = Recorder::default();
    let proxy = WriteProxy::new(&a, rec.clone());
    // The owner as seen on its own node.
    let owner = proxy.owner().clone();
    let proxy = ship(&a, &b, proxy).await;
    let mut w = proxy.into_writer();
    let mut expected = Vec::new();
    for i in 1..=500 {
        let line = format!("line {i}\n");
        w.write_all(line.as_bytes()).await.unwrap();
        expected.extend_from_slice(line.as_bytes());
    }
    let big = pattern(300_000, 7);
    w.write_all(&big).await.unwrap();
    expected.extend_from_slice(&big);
    w.write_all(b"the end\n").await.unwrap();
    expected.extend_from_slice(b"the end\n");
    w.flush().await.unwrap();
    assert_eq!(rec.data(), expected);
    // Dropping the writer ends the owner.
    let monitor = a.runtime().monitor(&owner);
    drop(w);
    assert_eq!(ended(monitor).await, ExitReason::Normal);
}

/// Flush and shutdown reach the original, after the bytes written before them.
async fn flush_and_shutdown_propagate(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let rec = Recorder::default();
    let mut w = ship(&a, &b, WriteProxy::new(&a, rec.clone()))
        .await
        .into_writer();
    w.write_all(b"abc").await.unwrap();
    w.flush().await.unwrap();
    {
        let r = rec.0.lock().unwrap();
        assert_eq!(r.data, b"abc");
        assert_eq!(r.flushes, 1);
        assert!(!r.shutdown);
    }
    w.write_all(b"def").await.unwrap();
    w.shutdown().await.unwrap();
    {
        let r = rec.0.lock().unwrap();
        assert_eq!(r.data, b"abcdef");
        assert!(r.shutdown);
    }
    // The original refuses writes after its shutdown: that error comes back too.
    let e = w.write_all(b"ghi").await.and(w.flush().await).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
}

/// An error of the original comes back as an `io::Error` of the same kind and message, and the
/// stream stays broken.
async fn original_error_comes_back(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let failing = Failing {
        left: 10_000,
        accepted: accepted.clone(),
    };
    let mut w = ship(&a, &b, WriteProxy::new(&a, failing))
        .await
        .into_writer();
    let data = pattern(1 << 20, 3);
    let e = tokio::time::timeout(T, async {
        w.write_all(&data).await?;
        w.flush().await
    })
    .await
    .expect("no hang")
    .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("disk says no"), "{e}");
    assert_eq!(accepted.load(Ordering::SeqCst), 10_000);
    let again = w.flush().await.unwrap_err();
    assert_eq!(again.kind(), io::ErrorKind::PermissionDenied);
    let again = w.write(b"x").await.unwrap_err();
    assert_eq!(again.kind(), io::ErrorKind::PermissionDenied);
}

/// A slow original holds the remote writer back: its writes complete no faster than the
/// original accepts bytes, and never more than `window × chunk` bytes are in flight.
async fn backpressure_bounds_bytes_in_flight(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let options = ProxyOptions {
        chunk_size: 16 << 10,
        window: 2,
        ..ProxyOptions::default()
    };
    let bound = options.chunk_size * options.window;
    let gate = Gate::default();
    let proxy = ship(&a, &b, WriteProxy::with_options(&a, gate.clone(), options)).await;
    assert_eq!(proxy.options().window, 2);
    let total = 256 << 10;
    let payload = pattern(total, 11);
    let completed = Arc::new(AtomicUsize::new(0));
    let (g, c, p) = (gate.clone(), completed.clone(), payload.clone());
    let writer = tokio::spawn(async move {
        let mut w = proxy.into_writer();
        let mut max_ahead = 0;
        for piece in p.chunks(16 << 10) {
            let mut off = 0;
            while off < piece.len() {
                let n = w.write(&piece[off..]).await?;
                off += n;
                let done = c.fetch_add(n, Ordering::SeqCst) + n;
                let accepted = g.accepted();
                assert!(
                    done <= accepted + bound,
                    "{done} bytes written remotely, {accepted} accepted by the original"
                );
                assert!(w.in_flight() <= 2);
                max_ahead = max_ahead.max(done - accepted);
            }
        }
        w.flush().await?;
        io::Result::Ok(max_ahead)
    });
    // The original accepts nothing: the remote writer stalls within its window.
    let deadline = Instant::now() + T;
    while completed.load(Ordering::SeqCst) < bound {
        assert!(Instant::now() < deadline, "the window fills");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Bytes reached the original and wait for credit. The writer checks the bound on every
    // write it completes, so a write past the window at any time fails it (and the test when
    // it is joined below).
    gate.until_waiting().await;
    assert_eq!(gate.accepted(), 0);
    assert!(completed.load(Ordering::SeqCst) <= bound);
    assert!(!writer.is_finished());
    // Let the bytes through, a little at a time.
    let deadline = Instant::now() + T;
    while !writer.is_finished() {
        assert!(Instant::now() < deadline, "the writer finishes");
        gate.grant(4096);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let max_ahead = writer.await.unwrap().unwrap();
    assert!(max_ahead <= bound);
    assert_eq!(gate.data(), payload);
}

/// A file-like reader read through a proxy arrives whole, and read-ahead is bounded.
async fn reads_arrive_whole(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let data = pattern(700_000, 5);
    let (source, produced) = Source::new(data.clone());
    let options = ProxyOptions {
        chunk_size: 32 << 10,
        window: 3,
        ..ProxyOptions::default()
    };
    let proxy = ReadProxy::with_options(&a, source, options);
    let owner = proxy.owner().clone();
    let proxy = ship(&a, &b, proxy).await;
    let mut r = proxy.into_reader();
    // Read slowly in small pieces, checking that the original is never far ahead.
    let bound = (options.window + 1) * options.chunk_size;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1000];
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let p = produced.load(Ordering::SeqCst);
        assert!(
            p <= got.len() + bound,
            "{p} produced, {} consumed",
            got.len()
        );
    }
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    // End of file stays end of file.
    assert_eq!(r.read(&mut buf).await.unwrap(), 0);
    let monitor = a.runtime().monitor(&owner);
    drop(r);
    assert_eq!(ended(monitor).await, ExitReason::Normal);
}

/// An error of the original reader comes back with its kind.
async fn read_error_comes_back(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let (mut source, _) = Source::new(pattern(100_000, 9));
    source.fail_at = Some(40_000);
    let mut r = ship(&a, &b, ReadProxy::new(&a, source)).await.into_reader();
    let mut got = Vec::new();
    let e = tokio::time::timeout(T, r.read_to_end(&mut got))
        .await
        .expect("no hang")
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("bad sector"), "{e}");
    assert_eq!(got.len(), 40_000);
}

/// The owner's node goes down while a write waits on a stuck original and a read waits on a
/// silent one: both fail with an error, not a hang; later operations fail fast.
async fn owner_node_down_is_an_error(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let gate = Gate::default();
    let (_silent_tx, silent_rx) = tokio::io::duplex(64);
    let original_read = Arc::new(tokio::sync::Notify::new());
    let silent_rx = Watched {
        inner: silent_rx,
        read: original_read.clone(),
    };
    let w = ship(&a, &b, WriteProxy::new(&a, gate.clone()))
        .await
        .into_writer();
    let r = ship(&a, &b, ReadProxy::new(&a, silent_rx))
        .await
        .into_reader();
    let writing = tokio::spawn(async move {
        let mut w = w;
        let res = async {
            w.write_all(&pattern(1 << 20, 1)).await?;
            w.flush().await
        }
        .await;
        (res, w)
    });
    let reading = tokio::spawn(async move {
        let mut r = r;
        let mut buf = [0u8; 16];
        let res = r.read(&mut buf).await;
        (res, r)
    });
    // Both wait on their originals: the written bytes reached the gate, which holds them back,
    // and the silent original is being read.
    gate.until_waiting().await;
    tokio::time::timeout(T, original_read.notified())
        .await
        .expect("the original of the reader is read");
    assert!(!writing.is_finished() && !reading.is_finished());
    a.shutdown().await;
    let (wres, mut w) = tokio::time::timeout(T, writing)
        .await
        .expect("the write fails, not hangs")
        .unwrap();
    let (rres, mut r) = tokio::time::timeout(T, reading)
        .await
        .expect("the read fails, not hangs")
        .unwrap();
    let we = wres.unwrap_err();
    let re = rres.unwrap_err();
    for e in [&we, &re] {
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::BrokenPipe
            ),
            "{e:?}"
        );
    }
    // Later operations fail at once too.
    let later = tokio::time::timeout(T, w.write(b"more")).await.unwrap();
    assert!(later.is_err());
    let mut buf = [0u8; 4];
    let later = tokio::time::timeout(T, r.read(&mut buf)).await.unwrap();
    assert!(later.is_err());
}

/// A writer made after the owner's node is gone fails fast with no connection.
async fn proxy_to_dead_node_fails_fast(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let proxy = ship(&a, &b, WriteProxy::new(&a, Recorder::default())).await;
    a.shutdown().await;
    drop(a);
    let mut w = proxy.into_writer();
    let res = tokio::time::timeout(T, async {
        w.write_all(b"anyone?").await?;
        w.flush().await
    })
    .await
    .expect("no hang");
    assert!(res.is_err());
}

/// The holder's node goes down: the owner process ends (it monitors the holder).
async fn holder_node_down_ends_owner(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let rec = Recorder::default();
    let proxy = WriteProxy::new(&a, rec.clone());
    // The owner as seen on its own node.
    let owner = proxy.owner().clone();
    let proxy = ship(&a, &b, proxy).await;
    let mut w = proxy.into_writer();
    w.write_all(b"before the fall\n").await.unwrap();
    w.flush().await.unwrap();
    let monitor = a.runtime().monitor(&owner);
    b.shutdown().await;
    assert_eq!(ended(monitor).await, ExitReason::Normal);
    assert_eq!(rec.data(), b"before the fall\n");
    drop(w);
}

/// Dropping the writer without a flush still delivers what `poll_write` accepted, in order,
/// and ends the owner; a proxy nobody attaches to ends after the attach timeout.
async fn drop_and_attach_timeout_end_owner(t: &str) {
    let a = node(t).await;
    let b = node(t).await;
    let rec = Recorder::default();
    let proxy = WriteProxy::new(&a, rec.clone());
    // The owner as seen on its own node.
    let owner = proxy.owner().clone();
    let proxy = ship(&a, &b, proxy).await;
    let mut w = proxy.into_writer();
    let data = pattern(200_000, 13);
    w.write_all(&data).await.unwrap();
    let monitor = a.runtime().monitor(&owner);
    drop(w);
    assert_eq!(ended(monitor).await, ExitReason::Normal);
    assert!(rec.data() == data);

    let options = ProxyOptions {
        attach_timeout: Duration::from_millis(200),
        ..ProxyOptions::default()
    };
    let unused = WriteProxy::with_options(&a, Recorder::default(), options);
    let monitor = a.runtime().monitor(unused.owner());
    let unused = ship(&a, &b, unused).await;
    assert_eq!(ended(monitor).await, ExitReason::Normal);
    // Using it now fails cleanly.
    let mut w = unused.into_writer();
    let res = tokio::time::timeout(T, async {
        w.write_all(b"late").await?;
        w.flush().await
    })
    .await
    .expect("no hang");
    assert_eq!(res.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
}

/// A proxy used on its own node works the same (local calls).
async fn local_use(t: &str) {
    let a = node(t).await;
    let rec = Recorder::default();
    let mut w = WriteProxy::new(&a, rec.clone()).into_writer();
    w.write_all(b"close to home").await.unwrap();
    w.flush().await.unwrap();
    assert_eq!(rec.data(), b"close to home");
    let (source, _) = Source::new(b"local bytes".to_vec());
    let mut r = ReadProxy::new(&a, source).into_reader();
    let mut s = String::new();
    r.read_to_string(&mut s).await.unwrap();
    assert_eq!(s, "local bytes");
}

common::suite!(
    writes_arrive_in_order,
    flush_and_shutdown_propagate,
    original_error_comes_back,
    backpressure_bounds_bytes_in_flight,
    reads_arrive_whole,
    read_error_comes_back,
    owner_node_down_is_an_error,
    proxy_to_dead_node_fails_fast,
    holder_node_down_ends_owner,
    drop_and_attach_timeout_end_owner,
    local_use,
);
