//! conc-core: the boundary with the node layer, exercised with a fake `NodeHook`/`RemoteSink`
//! (no network): remote pids, remote calls and their reply ids, delivery of incoming frames,
//! remote monitors and links.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use conc_core::erased_serde;
use conc_core::{
    BoxFuture, CallError, CallFailure, DeliverError, DownFn, Event, ExitReason, HookError, Inbox,
    NodeHook, Pid, ProcessId, ProcessUri, Refusal, RemoteError, RemoteSink, ReplyFailure,
    ReplyRequest, ReplyTo, Runtime, SendErrorKind, SendRequest, SpawnOptions, Target, TypeTag,
};
use futures_util::FutureExt;
use serde::de::IntoDeserializer;
use tokio::sync::{mpsc, oneshot};

const ME: &str = "me.test:1";
const PEER: &str = "peer.test:2";

/// What the fake sink was asked to do.
#[derive(Debug, PartialEq, Eq)]
enum SinkEvent {
    Send {
        target: Target,
        tag: TypeTag,
        call_ref: Option<u64>,
    },
    Reply {
        reply_id: u64,
    },
    ReplyDropped {
        reply_id: u64,
    },
    Monitor {
        target: Target,
        monitor: u64,
    },
    Demonitor {
        target: Target,
        monitor: u64,
    },
    Kill {
        target: Target,
    },
    Exit {
        target: Target,
        from: ProcessId,
        reason: ExitReason,
    },
    Link {
        target: Target,
        from: ProcessId,
        link: bool,
    },
}

struct FakeSink {
    rt: Mutex<Option<Runtime>>,
    events: mpsc::UnboundedSender<SinkEvent>,
    monitors: Mutex<HashMap<u64, DownFn>>,
    /// The bytes each send reports it queued.
    frame_bytes: AtomicUsize,
}

impl RemoteSink for FakeSink {
    fn peer(&self) -> &str {
        PEER
    }
    fn runtime(&self) -> Option<Runtime> {
        self.rt.lock().unwrap().clone()
    }
    fn send(&self, req: SendRequest<'_>) -> Result<usize, RemoteError> {
        let _ = self.events.send(SinkEvent::Send {
            target: req.target.clone(),
            tag: req.tag,
            call_ref: req.call_ref,
        });
        Ok(self.frame_bytes.load(Ordering::Relaxed))
    }
    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn reply(&self, req: ReplyRequest<'_>) -> Result<(), RemoteError> {
        let _ = self.events.send(SinkEvent::Reply {
            reply_id: req.reply_id,
        });
        Ok(())
    }
    fn reply_dropped(&self, _incarnation: u64, reply_id: u64, _panicking: bool) {
        let _ = self.events.send(SinkEvent::ReplyDropped { reply_id });
    }
    fn monitor(&self, target: &Target, monitor: u64, fire: DownFn) {
        self.monitors.lock().unwrap().insert(monitor, fire);
        let _ = self.events.send(SinkEvent::Monitor {
            target: target.clone(),
            monitor,
        });
    }
    fn link(&self, target: &Target, from: ProcessId, link: bool) {
        let _ = self.events.send(SinkEvent::Link {
            target: target.clone(),
            from,
            link,
        });
    }
    fn kill(&self, target: &Target) {
        let _ = self.events.send(SinkEvent::Kill {
            target: target.clone(),
        });
    }
    fn exit(&self, target: &Target, from: ProcessId, reason: ExitReason) {
        let _ = self.events.send(SinkEvent::Exit {
            target: target.clone(),
            from,
            reason,
        });
    }
    fn presumed_alive(&self, _target: &Target) -> bool {
        true
    }
    fn demonitor(&self, target: &Target, monitor: u64) {
        self.monitors.lock().unwrap().remove(&monitor);
        let _ = self.events.send(SinkEvent::Demonitor {
            target: target.clone(),
            monitor,
        });
    }
}

struct FakeHook {
    sink: Arc<FakeSink>,
}

impl NodeHook for FakeHook {
    fn node_name(&self) -> Arc<str> {
        ME.into()
    }
    fn remote_sink(&self, _node: &str) -> Arc<dyn RemoteSink> {
        self.sink.clone()
    }
}

/// A runtime with the fake node installed.
fn node() -> (Runtime, Arc<FakeSink>, mpsc::UnboundedReceiver<SinkEvent>) {
    let rt = Runtime::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = Arc::new(FakeSink {
        rt: Mutex::new(Some(rt.clone())),
        events: tx,
        monitors: Mutex::new(HashMap::new()),
        frame_bytes: AtomicUsize::new(40),
    });
    rt.node_side()
        .install_hook(Arc::new(FakeHook { sink: sink.clone() }))
        .unwrap();
    (rt, sink, rx)
}

/// A deserializer for a plain value (what a node would hand to `deliver`).
fn de<'de, T: IntoDeserializer<'de, serde::de::value::Error>>(
    v: T,
) -> impl erased_serde::Deserializer<'de> {
    <dyn erased_serde::Deserializer>::erase(v.into_deserializer())
}

fn remote_uri(id: u64) -> ProcessUri {
    ProcessUri {
        node: PEER.to_string(),
        target: Target::Id(ProcessId {
            incarnation: 77,
            id,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_needs_a_node_and_a_hook_is_installed_once() {
    let rt = Runtime::new();
    assert!(rt.node_side().hook().is_none());
    assert!(matches!(
        rt.resolve::<u64>(&remote_uri(1)),
        Err(RemoteError::NotStarted)
    ));
    let (rt, sink, _events) = node();
    assert!(rt.node_side().hook().is_some());
    assert_eq!(
        rt.node_side()
            .install_hook(Arc::new(FakeHook { sink }))
            .unwrap_err(),
        HookError::AlreadyInstalled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_pid_sends_through_the_sink() {
    let (rt, _sink, mut events) = node();
    let p: Pid<u64> = rt.resolve(&remote_uri(5)).unwrap();
    assert!(!p.is_local());
    assert!(p.is_alive());
    assert_eq!(p.uri(), remote_uri(5));
    assert_eq!(p.to_string(), format!("conc://{PEER}/77/5"));
    assert_eq!(p, rt.resolve::<u64>(&remote_uri(5)).unwrap());
    assert_ne!(p, rt.resolve::<u64>(&remote_uri(6)).unwrap());
    p.send(1).unwrap();
    assert_eq!(
        events.try_recv().unwrap(),
        SinkEvent::Send {
            target: remote_uri(5).target,
            tag: TypeTag::of::<u64>(),
            call_ref: None,
        }
    );
    // By name.
    let named: Pid<String> = rt.resolve(&ProcessUri::named(PEER, "logger")).unwrap();
    assert_eq!(named.id(), None);
    named.send("hi".to_string()).unwrap();
    assert_eq!(
        events.try_recv().unwrap(),
        SinkEvent::Send {
            target: Target::Name("logger".to_string()),
            tag: TypeTag::of::<String>(),
            call_ref: None,
        }
    );
    // Killing a remote pid does nothing locally.
    p.kill();
    rt.kill(&p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_pids_resolve_locally() {
    let (rt, _sink, _events) = node();
    let p = idle(&rt);
    assert_eq!(p.uri().node, ME);
    let again: Pid<u64> = rt.resolve(&p.uri()).unwrap();
    assert!(again.is_local());
    assert_eq!(again, p);
    rt.register("svc", &p).unwrap();
    let by_name: Pid<u64> = rt.resolve(&ProcessUri::named(ME, "svc")).unwrap();
    assert_eq!(by_name, p);

    // A process of an earlier incarnation of this node is refused, not a stranger.
    let stale = ProcessUri {
        node: ME.to_string(),
        target: Target::Id(ProcessId {
            incarnation: rt.incarnation().wrapping_add(1),
            id: pid_id(&p).id,
        }),
    };
    let stale: Pid<u64> = rt.resolve(&stale).unwrap();
    assert!(!stale.is_alive());
    assert_eq!(
        stale.send(1).unwrap_err().kind,
        SendErrorKind::NoSuchProcess
    );
    assert_eq!(
        within("monitor stale", rt.monitor(&stale)).await.reason,
        ExitReason::NoSuchProcess
    );

    // After the process exits its uri resolves to a dead pid.
    let mon = rt.monitor(&p);
    p.kill();
    within("exit", mon).await;
    let gone: Pid<u64> = rt.resolve(&p.uri()).unwrap();
    assert!(!gone.is_alive());
    assert_eq!(gone, p);
    assert_eq!(
        within("call dead", gone.call(|_r: ReplyTo<u64>| 0, HANG)).await,
        Err(CallError::Send(SendErrorKind::NoSuchProcess))
    );
}

async fn next_call_ref(events: &mut mpsc::UnboundedReceiver<SinkEvent>) -> u64 {
    match within("call request", events.recv()).await.unwrap() {
        SinkEvent::Send {
            call_ref: Some(id), ..
        } => id,
        other => panic!("expected a call request, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_call_is_answered_through_its_reply_id() {
    let (rt, _sink, mut events) = node();
    let p: Pid<(u64, ReplyTo<u64>)> = rt.resolve(&remote_uri(9)).unwrap();
    let call = {
        let p = p.clone();
        tokio::spawn(async move { p.call(|r| (1, r), HANG).await })
    };
    let id = next_call_ref(&mut events).await;
    assert_eq!(rt.node_side().pending_remote_calls(), 1);
    // A reply of the wrong type is refused and the call keeps waiting.
    assert!(matches!(
        rt.node_side()
            .deliver_reply(id, TypeTag::of::<String>(), &mut de("x")),
        Err(DeliverError::TypeMismatch { .. })
    ));
    rt.node_side()
        .deliver_reply(id, TypeTag::of::<u64>(), &mut de(42u64))
        .unwrap();
    assert_eq!(within("call", call).await.unwrap(), Ok(42));
    assert_eq!(rt.node_side().pending_remote_calls(), 0);
    // A second reply finds no caller.
    assert_eq!(
        rt.node_side()
            .deliver_reply(id, TypeTag::of::<u64>(), &mut de(43u64)),
        Err(DeliverError::NoCaller)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_call_fails_as_the_node_reports() {
    let (rt, _sink, mut events) = node();
    let p: Pid<(u64, ReplyTo<u64>)> = rt.resolve(&remote_uri(9)).unwrap();
    for (failure, expected) in [
        (
            CallFailure::Exited(ExitReason::NoConnection),
            CallError::Exited(ExitReason::NoConnection),
        ),
        (
            CallFailure::Dropped { panicking: false },
            CallError::NoReply,
        ),
        (
            CallFailure::Remote(RemoteError::Refused {
                peer: PEER.to_string(),
                reason: Refusal::TypeMismatch,
            }),
            CallError::Refused {
                peer: PEER.to_string(),
                reason: Refusal::TypeMismatch,
            },
        ),
        (
            CallFailure::Remote(RemoteError::PeerBusy(PEER.to_string())),
            CallError::Send(SendErrorKind::Remote(RemoteError::PeerBusy(
                PEER.to_string(),
            ))),
        ),
        (CallFailure::ShuttingDown, CallError::ShuttingDown),
        (
            CallFailure::ReplyNotSent(ReplyFailure::TooLarge),
            CallError::ReplyNotSent(ReplyFailure::TooLarge),
        ),
    ] {
        let call = {
            let p = p.clone();
            tokio::spawn(async move { p.call(|r| (1, r), Duration::from_secs(60)).await })
        };
        let id = next_call_ref(&mut events).await;
        rt.node_side().fail_call(id, failure.clone());
        let res = within_for("failed call", Duration::from_secs(20), call)
            .await
            .unwrap();
        assert_eq!(res, Err(expected), "{failure:?}");
    }
    // A remote reply handle dropped while panicking: the remote callee is not ours to watch, so
    // the call must fail at once too.
    let call = {
        let p = p.clone();
        tokio::spawn(async move { p.call(|r| (1, r), Duration::from_secs(60)).await })
    };
    let id = next_call_ref(&mut events).await;
    rt.node_side()
        .fail_call(id, CallFailure::Dropped { panicking: true });
    let res = within_for("failed call", Duration::from_secs(20), call)
        .await
        .unwrap();
    assert!(res.is_err(), "{res:?}");
    assert_eq!(rt.node_side().pending_remote_calls(), 0);
    rt.node_side()
        .fail_call(12345, CallFailure::Dropped { panicking: false }); // unknown: ignored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_call_timeout_unexports_the_reply() {
    let (rt, _sink, mut events) = node();
    let p: Pid<(u64, ReplyTo<u64>)> = rt.resolve(&remote_uri(9)).unwrap();
    let res = p.call(|r| (1, r), Duration::from_millis(20)).await;
    assert_eq!(res, Err(CallError::Timeout(Duration::from_millis(20))));
    let id = next_call_ref(&mut events).await;
    assert_eq!(rt.node_side().pending_remote_calls(), 0);
    assert_eq!(
        rt.node_side()
            .deliver_reply(id, TypeTag::of::<u64>(), &mut de(1u64)),
        Err(DeliverError::NoCaller)
    );
}

/// A remote call whose future is dropped (cancelled) must not leave its reply exported forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_remote_call_unexports_the_reply() {
    let (rt, _sink, mut events) = node();
    let p: Pid<(u64, ReplyTo<u64>)> = rt.resolve(&remote_uri(9)).unwrap();
    let mut call = Box::pin(p.call(|r| (1, r), Duration::from_secs(60)));
    assert!((&mut call).now_or_never().is_none());
    let id = next_call_ref(&mut events).await;
    drop(call);
    assert_eq!(
        rt.node_side()
            .deliver_reply(id, TypeTag::of::<u64>(), &mut de(1u64)),
        Err(DeliverError::NoCaller),
        "a reply to a cancelled remote call was accepted"
    );
    assert_eq!(
        rt.node_side().pending_remote_calls(),
        0,
        "reply export leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_checks_target_and_type_before_decoding() {
    let (rt, _sink, _events) = node();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        while let Some(m) = inbox.recv().await {
            let _ = tx.send(m);
        }
    });
    rt.register("sink", &p).unwrap();
    let id = Target::Id(pid_id(&p));
    let tag = TypeTag::of::<u64>();

    rt.node_side().deliver(&id, tag, &mut de(5u64)).unwrap();
    assert_eq!(within("by id", rx.recv()).await, Some(5));
    rt.node_side()
        .deliver(&Target::Name("sink".to_string()), tag, &mut de(6u64))
        .unwrap();
    assert_eq!(within("by name", rx.recv()).await, Some(6));

    let other_incarnation = Target::Id(ProcessId {
        incarnation: rt.incarnation().wrapping_add(1),
        id: pid_id(&p).id,
    });
    assert_eq!(
        rt.node_side()
            .deliver(&other_incarnation, tag, &mut de(7u64)),
        Err(DeliverError::NoSuchProcess)
    );
    let unknown = Target::Id(ProcessId {
        incarnation: rt.incarnation(),
        id: 999_999,
    });
    assert_eq!(
        rt.node_side().deliver(&unknown, tag, &mut de(7u64)),
        Err(DeliverError::NoSuchProcess)
    );
    assert_eq!(
        rt.node_side()
            .deliver(&Target::Name("nobody".to_string()), tag, &mut de(7u64)),
        Err(DeliverError::UnknownName("nobody".to_string()))
    );
    assert!(matches!(
        rt.node_side()
            .deliver(&id, TypeTag::of::<String>(), &mut de("x")),
        Err(DeliverError::TypeMismatch { .. })
    ));
    // Right tag, undecodable body.
    assert!(matches!(
        rt.node_side().deliver(&id, tag, &mut de("not a number")),
        Err(DeliverError::Decode(_))
    ));

    // Local-only and full targets.
    let local = rt.spawn_local(SpawnOptions::default(), |_inbox: Inbox<u64>| {
        std::future::pending::<()>()
    });
    assert_eq!(
        rt.node_side()
            .deliver(&Target::Id(pid_id(&local)), tag, &mut de(1u64)),
        Err(DeliverError::LocalOnly)
    );
    let full = rt.spawn_with(SpawnOptions::bounded(1), |_inbox: Inbox<u64>| {
        std::future::pending::<()>()
    });
    full.send(1).unwrap();
    assert_eq!(
        rt.node_side()
            .deliver(&Target::Id(pid_id(&full)), tag, &mut de(2u64)),
        Err(DeliverError::MailboxFull)
    );
    // Nothing else reached the process.
    assert!(rx.try_recv().is_err());
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_of_remote_pids_go_through_the_sink() {
    let (rt, sink, mut events) = node();
    let remote: Pid<u64> = rt.resolve(&remote_uri(3)).unwrap();

    // rt.monitor
    let mon = rt.monitor(&remote);
    let mref = match within("monitor", events.recv()).await.unwrap() {
        SinkEvent::Monitor { target, monitor } => {
            assert_eq!(target, remote_uri(3).target);
            monitor
        }
        other => panic!("{other:?}"),
    };
    let fire = sink.monitors.lock().unwrap().remove(&mref).unwrap();
    fire(ExitReason::NoConnection, None);
    let down = within("down", mon).await;
    assert_eq!(down.reason, ExitReason::NoConnection);
    assert_eq!(down.pid, remote.id().unwrap());

    // inbox.monitor and demonitor
    let (tx, rx) = oneshot::channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let r = remote.clone();
    rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let m1 = inbox.monitor(&r);
        let m2 = inbox.monitor(&r);
        inbox.demonitor(&r, m1);
        let _ = ready_tx.send(());
        let ev = inbox.recv_event_timeout(HANG).await;
        let _ = tx.send((m2, ev));
    });
    within("ready", ready_rx).await.unwrap();
    let mut set = Vec::new();
    for _ in 0..3 {
        set.push(within("sink event", events.recv()).await.unwrap());
    }
    assert!(matches!(set[2], SinkEvent::Demonitor { .. }), "{set:?}");
    let live: Vec<u64> = sink.monitors.lock().unwrap().keys().copied().collect();
    assert_eq!(live.len(), 1);
    let fire = sink.monitors.lock().unwrap().remove(&live[0]).unwrap();
    fire(ExitReason::Killed, None);
    let (m2, ev) = within("report", rx).await.unwrap();
    match ev {
        Ok(Event::Down(d)) => {
            assert_eq!(d.monitor, m2);
            assert_eq!(d.reason, ExitReason::Killed);
            assert_eq!(d.pid, remote.id().unwrap());
        }
        other => panic!("expected Down, got {other:?}"),
    }
}

/// Linking to a remote process that (as far as this node knows) is alive must not kill the
/// linker; the link (and an unlink) goes to the node through the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linking_to_a_live_remote_pid_does_not_kill_the_linker() {
    let (rt, _sink, mut events) = node();
    let remote: Pid<Cmd> = rt.resolve(&remote_uri(3)).unwrap();
    let a = agent(&rt);
    let ma = rt.monitor(&a);
    let _ = within(
        "link",
        a.call(|ack| Cmd::Op(Op::Link(remote.clone()), ack), HANG),
    )
    .await;
    // If the linker was killed, its monitor fires; if not, it answers a further op.
    let alive = tokio::select! {
        down = ma => Err(down.reason),
        res = a.call(|ack| Cmd::Op(Op::Trap(false), ack), HANG) => Ok(res),
    };
    assert!(
        matches!(alive, Ok(Ok(()))),
        "linker died after linking to a remote pid: {alive:?}"
    );
    assert_eq!(
        events.try_recv().ok(),
        Some(SinkEvent::Link {
            target: remote_uri(3).target,
            from: pid_id(&a),
            link: true,
        })
    );
    op(&a, Op::Unlink(remote)).await;
    assert_eq!(
        events.try_recv().ok(),
        Some(SinkEvent::Link {
            target: remote_uri(3).target,
            from: pid_id(&a),
            link: false,
        })
    );
}

/// An exit signal to a remote pid goes to its node through the sink, with the sender's id and
/// the reason; a kill goes as a kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_signals_to_a_remote_pid_go_through_the_sink() {
    let (rt, _sink, mut events) = node();
    let remote: Pid<Cmd> = rt.resolve(&remote_uri(3)).unwrap();
    let (done_tx, done_rx) = oneshot::channel();
    let sender = rt.spawn(move |inbox: Inbox<()>| async move {
        inbox.send_exit(&remote, ExitReason::Shutdown);
        remote.kill();
        let _ = done_tx.send(());
        std::future::pending::<()>().await
    });
    within("the signals sent", done_rx).await.unwrap();
    assert_eq!(
        events.try_recv().ok(),
        Some(SinkEvent::Exit {
            target: remote_uri(3).target,
            from: pid_id(&sender),
            reason: ExitReason::Shutdown,
        })
    );
    assert_eq!(
        events.try_recv().ok(),
        Some(SinkEvent::Kill {
            target: remote_uri(3).target,
        })
    );
}

/// Delivers `v` to `target` through `cache` (the node's path for a stream of frames).
fn deliver_cached(
    rt: &Runtime,
    cache: &mut conc_core::node_side::DeliveryCache,
    target: &Target,
    v: u64,
) -> Result<(), DeliverError> {
    rt.node_side().deliver_body_cached(
        cache,
        target,
        TypeTag::of::<u64>(),
        &[],
        |deliver| deliver(&mut de(v)),
        None,
    )
}

/// A process that forwards what it receives, tagged with `who`.
fn forwarder(rt: &Runtime, who: u8, tx: mpsc::UnboundedSender<(u8, u64)>) -> Pid<u64> {
    rt.spawn(move |mut inbox: Inbox<u64>| async move {
        while let Some(m) = inbox.recv().await {
            let _ = tx.send((who, m));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_delivery_follows_the_registry() {
    let (rt, _sink, _events) = node();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = forwarder(&rt, 1, tx.clone());
    let b = forwarder(&rt, 2, tx.clone());
    rt.register("svc", &a).unwrap();
    let name = Target::Name("svc".to_string());
    let mut cache = conc_core::node_side::DeliveryCache::new();

    // By name: the holder, again and again (the second one from the cache).
    deliver_cached(&rt, &mut cache, &name, 1).unwrap();
    deliver_cached(&rt, &mut cache, &name, 2).unwrap();
    assert_eq!(within("a", rx.recv()).await, Some((1, 1)));
    assert_eq!(within("a", rx.recv()).await, Some((1, 2)));

    // The name moves to another live process: messages follow it at once.
    assert!(rt.unregister("svc"));
    assert_eq!(
        deliver_cached(&rt, &mut cache, &name, 3),
        Err(DeliverError::UnknownName("svc".to_string()))
    );
    rt.register("svc", &b).unwrap();
    deliver_cached(&rt, &mut cache, &name, 4).unwrap();
    assert_eq!(within("b", rx.recv()).await, Some((2, 4)));

    // Back to the first process (which still lives) while the cache holds the second.
    assert!(rt.unregister("svc"));
    rt.register("svc", &a).unwrap();
    deliver_cached(&rt, &mut cache, &name, 5).unwrap();
    assert_eq!(within("a again", rx.recv()).await, Some((1, 5)));

    // The holder exits: its name is free, and a message by name is refused, not lost in the
    // dead mailbox; a message by its pid is refused too.
    let a_id = Target::Id(pid_id(&a));
    deliver_cached(&rt, &mut cache, &a_id, 6).unwrap();
    assert_eq!(within("a by id", rx.recv()).await, Some((1, 6)));
    let exited = rt.monitor(&a);
    a.kill();
    within("a exits", exited).await;
    assert_eq!(
        deliver_cached(&rt, &mut cache, &name, 7),
        Err(DeliverError::UnknownName("svc".to_string()))
    );
    assert_eq!(
        deliver_cached(&rt, &mut cache, &a_id, 8),
        Err(DeliverError::NoSuchProcess)
    );

    // A type mismatch is still refused for a cached target, and a pid of another incarnation
    // never reaches the cache.
    let b_id = Target::Id(pid_id(&b));
    deliver_cached(&rt, &mut cache, &b_id, 9).unwrap();
    assert_eq!(within("b by id", rx.recv()).await, Some((2, 9)));
    assert!(matches!(
        rt.node_side().deliver_body_cached(
            &mut cache,
            &b_id,
            TypeTag::of::<String>(),
            &[],
            |deliver| deliver(&mut de("x")),
            None,
        ),
        Err(DeliverError::TypeMismatch { .. })
    ));
    let elsewhere = Target::Id(ProcessId {
        incarnation: rt.incarnation().wrapping_add(1),
        id: pid_id(&b).id,
    });
    assert_eq!(
        deliver_cached(&rt, &mut cache, &elsewhere, 10),
        Err(DeliverError::NoSuchProcess)
    );

    // Many targets (more than the cache's slots) each get their own messages.
    let many: Vec<Pid<u64>> = (0..40)
        .map(|i| forwarder(&rt, 10 + i, tx.clone()))
        .collect();
    for (i, p) in many.iter().enumerate() {
        rt.register(&format!("m{i}"), p).unwrap();
    }
    for round in 0..3u64 {
        for i in 0..many.len() {
            deliver_cached(&rt, &mut cache, &Target::Name(format!("m{i}")), round).unwrap();
            assert_eq!(within("many", rx.recv()).await, Some((10 + i as u8, round)));
        }
    }
}

/// Sends `n` messages with `send_wait` to `p` on a current-thread runtime where another task
/// counts its own turns; returns, for each send, whether that task ran during it (i.e. whether
/// the send yielded).
async fn yields_per_send(p: &Pid<u64>, n: u64) -> Vec<bool> {
    let turns = Arc::new(AtomicUsize::new(0));
    let counter = {
        let turns = turns.clone();
        tokio::spawn(async move {
            loop {
                turns.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    // Let the counter start.
    tokio::task::yield_now().await;
    let mut yielded = Vec::new();
    for i in 0..n {
        let before = turns.load(Ordering::Relaxed);
        p.send_wait(i).await.unwrap();
        yielded.push(turns.load(Ordering::Relaxed) != before);
    }
    counter.abort();
    yielded
}

#[tokio::test(flavor = "current_thread")]
async fn send_wait_yields_after_every_large_remote_send() {
    let (rt, sink, _events) = node();
    let p: Pid<u64> = rt.resolve(&remote_uri(5)).unwrap();
    // The sink reports 8 MiB queued per send: each send spends more than the whole budget.
    sink.frame_bytes.store(8 << 20, Ordering::Relaxed);
    assert_eq!(yields_per_send(&p, 5).await, vec![true; 5]);
    // 64 KiB per send costs 257 units of the 1,024: a yield every fourth send.
    sink.frame_bytes.store(64 << 10, Ordering::Relaxed);
    let every_fourth: Vec<bool> = (1..=40).map(|i| i % 4 == 0).collect();
    assert_eq!(yields_per_send(&p, 40).await, every_fourth);
}

#[tokio::test(flavor = "current_thread")]
async fn send_wait_of_small_messages_yields_once_per_budget() {
    let (rt, sink, _events) = node();
    let p: Pid<u64> = rt.resolve(&remote_uri(5)).unwrap();
    sink.frame_bytes.store(40, Ordering::Relaxed);
    let n = conc_core::SEND_BUDGET as u64 * 3;
    let yielded = yields_per_send(&p, n).await;
    assert_eq!(
        yielded.iter().filter(|y| **y).count(),
        3,
        "one yield per budget"
    );
    // Local sends cost one unit each too.
    let local = rt.spawn(|_inbox: Inbox<u64>| std::future::pending::<()>());
    let yielded = yields_per_send(&local, n).await;
    assert_eq!(
        yielded.iter().filter(|y| **y).count(),
        3,
        "one yield per budget"
    );
}
