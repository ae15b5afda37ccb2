//! The server behaviour and timers: calls, casts, info messages, monitors and exits in
//! `handle_info`, `init` failures, stop and `terminate`, panics, servers under supervisors, and
//! `send_after`/`cancel`, on tokio's paused clock.

mod common;

use std::time::Duration;

use common::within;
use conc_core::server::{Info, Request, Server, ServerContext, ServerMsg, ServerRef};
use conc_core::supervisor::{ChildSpec, StartError, Strategy, SupervisorSpec};
use conc_core::timer::{TimerRef, send_after};
use conc_core::{CallError, ExitReason, Inbox, Message, Runtime};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(5);

/// A key-value store with a log of what happened to it.
struct Store {
    items: Vec<(String, u64)>,
    log: mpsc::UnboundedSender<String>,
    fail_init: bool,
    trap: bool,
    ticks: u32,
    timer: Option<TimerRef>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Call {
    Get(String),
    Len,
    Panic,
    StopAfterReply,
    /// Start a tick timer: `Tick` every `ms` milliseconds, `n` times.
    StartTicks(u64),
    CancelTicks,
    Ticks,
    Watch(conc_core::Pid<u64>),
    /// Take this many milliseconds to answer.
    Slow(u64),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Reply {
    Value(Option<u64>),
    Len(usize),
    Done,
    Cancelled(bool),
    Ticks(u32),
}

#[derive(Debug, Serialize, Deserialize)]
enum Cast {
    Put(String, u64),
}

#[derive(Debug, Serialize, Deserialize)]
enum Tick {
    Tick(u64),
    Note(String),
}

impl Store {
    fn new(log: &mpsc::UnboundedSender<String>) -> Store {
        Store {
            items: Vec::new(),
            log: log.clone(),
            fail_init: false,
            trap: false,
            ticks: 0,
            timer: None,
        }
    }

    fn note(&self, s: impl Into<String>) {
        let _ = self.log.send(s.into());
    }
}

impl Server for Store {
    type Call = Call;
    type Reply = Reply;
    type Cast = Cast;
    type Info = Tick;

    async fn init(&mut self, ctx: &mut ServerContext<Self>) -> Result<(), ExitReason> {
        if self.fail_init {
            return Err(ExitReason::Other("no storage".into()));
        }
        ctx.trap_exit(self.trap);
        self.note("init");
        Ok(())
    }

    async fn handle_call(&mut self, request: Call, ctx: &mut ServerContext<Self>) -> Reply {
        match request {
            Call::Get(k) => Reply::Value(self.items.iter().find(|(key, _)| *key == k).map(|i| i.1)),
            Call::Len => Reply::Len(self.items.len()),
            Call::Panic => panic!("store panics"),
            Call::StopAfterReply => {
                ctx.stop(ExitReason::Other("asked".into()));
                Reply::Done
            }
            Call::StartTicks(ms) => {
                self.timer = Some(ctx.send_after(Tick::Tick(ms), Duration::from_millis(ms)));
                Reply::Done
            }
            Call::CancelTicks => Reply::Cancelled(self.timer.take().is_some_and(|t| t.cancel())),
            Call::Ticks => Reply::Ticks(self.ticks),
            Call::Slow(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Reply::Done
            }
            Call::Watch(pid) => {
                ctx.monitor(&pid);
                ctx.link(&pid);
                Reply::Done
            }
        }
    }

    async fn handle_cast(&mut self, Cast::Put(k, v): Cast, _ctx: &mut ServerContext<Self>) {
        self.items.push((k, v));
    }

    async fn handle_info(&mut self, info: Info<Tick>, ctx: &mut ServerContext<Self>) {
        match info {
            Info::Message(Tick::Tick(ms)) => {
                self.ticks += 1;
                self.note(format!("tick {}", self.ticks));
                self.timer = Some(ctx.send_after(Tick::Tick(ms), Duration::from_millis(ms)));
            }
            Info::Message(Tick::Note(s)) => self.note(s),
            Info::Down(d) => self.note(format!("down {}", d.reason)),
            Info::Exit(e) => self.note(format!("exit {}", e.reason)),
        }
    }

    async fn terminate(&mut self, reason: &ExitReason, _ctx: &mut ServerContext<Self>) {
        self.note(format!("terminate {reason}"));
    }
}

async fn next(log: &mut mpsc::UnboundedReceiver<String>) -> String {
    within("next log line", log.recv()).await.unwrap()
}

#[test]
fn the_message_type_is_serializable_when_the_servers_types_are() {
    fn is_message<M: Message>() {}
    is_message::<ServerMsg<Store>>();
    is_message::<Request<String, u64, (), ()>>();
}

#[tokio::test(start_paused = true)]
async fn calls_casts_and_infos_run_in_order() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let store = ServerRef::start(&rt, Store::new(&tx)).await.unwrap();
    assert_eq!(next(&mut log).await, "init");
    store.cast(Cast::Put("a".into(), 1)).unwrap();
    store.cast(Cast::Put("b".into(), 2)).unwrap();
    store.info(Tick::Note("hello".into())).unwrap();
    assert_eq!(store.call(Call::Len, T).await.unwrap(), Reply::Len(2));
    assert_eq!(
        store.call(Call::Get("b".into()), T).await.unwrap(),
        Reply::Value(Some(2))
    );
    assert_eq!(next(&mut log).await, "hello");

    // The handle hands a message back when the server is gone.
    let reason = store.stop(ExitReason::Normal, T).await.unwrap();
    assert_eq!(reason, ExitReason::Normal);
    assert_eq!(next(&mut log).await, "terminate normal");
    let back = store.cast(Cast::Put("c".into(), 3)).unwrap_err();
    assert!(matches!(back.message, Cast::Put(k, 3) if k == "c"));
    assert!(matches!(
        store.call(Call::Len, T).await,
        Err(CallError::Send(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failed_init_fails_the_start_with_its_reason() {
    let rt = Runtime::new();
    let (tx, _log) = mpsc::unbounded_channel();
    let mut s = Store::new(&tx);
    s.fail_init = true;
    match ServerRef::start(&rt, s).await {
        Err(StartError::Exited(ExitReason::Other(why))) => assert_eq!(why, "no storage"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn stop_from_a_callback_replies_then_terminates() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let store = ServerRef::start(&rt, Store::new(&tx)).await.unwrap();
    let down = rt.monitor(store.pid());
    assert_eq!(
        store.call(Call::StopAfterReply, T).await.unwrap(),
        Reply::Done
    );
    assert_eq!(next(&mut log).await, "init");
    assert_eq!(next(&mut log).await, "terminate exit: asked");
    assert_eq!(
        within("exit", down).await.reason,
        ExitReason::Other("asked".into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_callback_runs_terminate_and_fails_the_call() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let store = ServerRef::start(&rt, Store::new(&tx)).await.unwrap();
    let down = rt.monitor(store.pid());
    match store.call(Call::Panic, T).await {
        Err(CallError::Exited(ExitReason::Panic(msg))) => assert_eq!(msg, "store panics"),
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut log).await, "init");
    assert_eq!(next(&mut log).await, "terminate panic: store panics");
    assert_eq!(
        within("exit", down).await.reason,
        ExitReason::Panic("store panics".into())
    );
}

#[tokio::test(start_paused = true)]
async fn monitors_and_trapped_exits_reach_handle_info() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let mut s = Store::new(&tx);
    s.trap = true;
    let store = ServerRef::start(&rt, s).await.unwrap();
    assert_eq!(next(&mut log).await, "init");
    let other = rt.spawn(|mut inbox: Inbox<u64>| async move {
        let _ = inbox.recv().await;
        inbox.exit(ExitReason::Other("bye".into()));
        std::future::pending::<()>().await;
    });
    store.call(Call::Watch(other.clone()), T).await.unwrap();
    other.send(1).unwrap();
    let mut got = vec![next(&mut log).await, next(&mut log).await];
    got.sort();
    assert_eq!(got, ["down exit: bye", "exit exit: bye"]);
    // The server trapped the exit: it still runs.
    assert_eq!(store.call(Call::Len, T).await.unwrap(), Reply::Len(0));
}

#[tokio::test(start_paused = true)]
async fn timers_fire_on_time_and_cancel_says_whether_they_were_pending() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let store = ServerRef::start(&rt, Store::new(&tx)).await.unwrap();
    assert_eq!(next(&mut log).await, "init");
    let begun = tokio::time::Instant::now();
    store.call(Call::StartTicks(100), T).await.unwrap();
    assert_eq!(next(&mut log).await, "tick 1");
    assert_eq!(next(&mut log).await, "tick 2");
    assert_eq!(next(&mut log).await, "tick 3");
    assert!(begun.elapsed() >= Duration::from_millis(300));
    // The next tick is pending: cancelling it stops the ticks.
    assert_eq!(
        store.call(Call::CancelTicks, T).await.unwrap(),
        Reply::Cancelled(true)
    );
    let ticks = store.call(Call::Ticks, T).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(store.call(Call::Ticks, T).await.unwrap(), ticks);
    assert!(log.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn send_after_works_for_plain_processes_and_cancel_after_firing_is_false() {
    let rt = Runtime::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pid = rt.spawn_local(
        Default::default(),
        move |mut inbox: Inbox<&'static str>| async move {
            while let Some(m) = inbox.recv().await {
                let _ = tx.send(m);
            }
        },
    );
    let late = send_after(&pid, "late", Duration::from_secs(2));
    let early = send_after(&pid, "early", Duration::from_secs(1));
    assert!(early.is_pending());
    assert_eq!(within("early", rx.recv()).await, Some("early"));
    assert!(!early.is_pending());
    assert!(!early.cancel(), "fired already");
    assert!(late.cancel());
    assert!(!late.cancel(), "cancelled already");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(rx.try_recv().is_err(), "a cancelled timer sends nothing");
}

#[tokio::test(start_paused = true)]
async fn a_supervised_server_terminates_on_its_supervisors_shutdown_and_restarts_by_name() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let rt2 = rt.clone();
    let sup = SupervisorSpec::new(Strategy::OneForOne)
        .child(
            ChildSpec::new("store", move || {
                let rt = rt2.clone();
                let mut s = Store::new(&tx);
                s.trap = true;
                async move { Ok(ServerRef::start(&rt, s).await?.into()) }
            })
            .name("store"),
        )
        .start(&rt)
        .await
        .unwrap();
    assert_eq!(next(&mut log).await, "init");
    let store = ServerRef::<Store>::from_pid(rt.whereis::<ServerMsg<Store>>("store").unwrap());
    store.cast(Cast::Put("k".into(), 7)).unwrap();
    // A crash: the supervisor starts a fresh server (empty state) under the same name.
    let _ = store.call(Call::Panic, T).await;
    assert_eq!(next(&mut log).await, "terminate panic: store panics");
    assert_eq!(next(&mut log).await, "init");
    let again = within("restarted", async {
        loop {
            if let Ok(p) = rt.whereis::<ServerMsg<Store>>("store")
                && p != *store.pid()
            {
                return ServerRef::<Store>::from_pid(p);
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(again.call(Call::Len, T).await.unwrap(), Reply::Len(0));
    // The supervisor's shutdown signal comes from its parent: terminate runs with it.
    sup.stop(T).await.unwrap();
    assert_eq!(next(&mut log).await, "terminate shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_call_times_out_and_the_late_reply_is_dropped() {
    let rt = Runtime::new();
    let (tx, _log) = mpsc::unbounded_channel();
    let store = ServerRef::start(&rt, Store::new(&tx)).await.unwrap();
    match store.call(Call::Slow(10_000), Duration::from_secs(1)).await {
        Err(CallError::Timeout(d)) => assert_eq!(d, Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
    // The server finishes the slow call (its reply is dropped) and answers the next one.
    assert_eq!(store.call(Call::Len, T * 4).await.unwrap(), Reply::Len(0));
}

/// A server that answers calls later (Erlang's `{noreply, State}` and `gen_server:reply/2`):
/// `Wait` calls are held until a `Release` cast answers them all, in arrival order; `Now` is
/// answered at once through `handle_call`; a held call handed to another process is answered
/// from there. Other calls keep being served while calls are held.
struct Gate {
    held: Vec<(u64, conc_core::ReplyTo<u64>)>,
}

#[derive(Debug, Serialize, Deserialize)]
enum GateCall {
    Wait(u64),
    Now(u64),
    /// Answered by a helper process, with the value doubled.
    Delegate(u64),
    /// How many calls are held.
    Held,
}

impl Server for Gate {
    type Call = GateCall;
    type Reply = u64;
    type Cast = ();
    type Info = ();

    async fn handle_call(&mut self, request: GateCall, _: &mut ServerContext<Self>) -> u64 {
        match request {
            GateCall::Now(n) => n,
            GateCall::Held => self.held.len() as u64,
            other => panic!("handle_call got a deferred call: {other:?}"),
        }
    }

    async fn handle_call_from(
        &mut self,
        request: GateCall,
        from: conc_core::ReplyTo<u64>,
        ctx: &mut ServerContext<Self>,
    ) {
        match request {
            GateCall::Wait(n) => self.held.push((n, from)),
            GateCall::Delegate(n) => {
                ctx.runtime().spawn(move |_: Inbox<()>| async move {
                    let _ = from.send(n * 2);
                });
            }
            now => {
                let answer = self.handle_call(now, ctx).await;
                let _ = from.send(answer);
            }
        }
    }

    async fn handle_cast(&mut self, (): (), _: &mut ServerContext<Self>) {
        for (n, from) in self.held.drain(..) {
            from.send(n + 100).unwrap();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn deferred_replies_are_answered_later_or_elsewhere() {
    let rt = Runtime::new();
    let gate = ServerRef::start(&rt, Gate { held: Vec::new() })
        .await
        .unwrap();
    let waits: Vec<_> = (0..3u64)
        .map(|n| {
            let gate = gate.clone();
            tokio::spawn(async move { gate.call(GateCall::Wait(n), T).await })
        })
        .collect();
    // Held calls do not block the server.
    assert_eq!(gate.call(GateCall::Now(7), T).await.unwrap(), 7);
    assert_eq!(gate.call(GateCall::Delegate(21), T).await.unwrap(), 42);
    // Wait until all three are held (the calls run on other tasks).
    while gate.call(GateCall::Held, T).await.unwrap() < 3 {
        tokio::task::yield_now().await;
    }
    assert!(waits.iter().all(|w| !w.is_finished()));
    gate.cast(()).unwrap();
    let mut answers = Vec::new();
    for w in waits {
        answers.push(within("a held call", w).await.unwrap().unwrap());
    }
    assert_eq!(answers, vec![100, 101, 102]);
}

#[tokio::test(start_paused = true)]
async fn a_deferred_reply_dropped_unanswered_fails_the_call_at_once() {
    struct Forgetful;
    impl Server for Forgetful {
        type Call = ();
        type Reply = u64;
        type Cast = ();
        type Info = ();
        async fn handle_call(&mut self, (): (), _: &mut ServerContext<Self>) -> u64 {
            0
        }
        async fn handle_call_from(
            &mut self,
            (): (),
            from: conc_core::ReplyTo<u64>,
            _: &mut ServerContext<Self>,
        ) {
            drop(from);
        }
    }
    let rt = Runtime::new();
    let s = ServerRef::start(&rt, Forgetful).await.unwrap();
    assert_eq!(s.call((), T).await, Err(CallError::NoReply));
}
