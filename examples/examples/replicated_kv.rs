//! A key-value store replicated on N nodes, each an OS process, written from conc's public
//! docs only. Every node holds the whole store; a write on any node is applied there and
//! replicated by calls to every other node that is up, and answered once they have taken it.
//!
//! ```text
//! cargo run -p examples --example replicated_kv -- --listen 127.0.0.1:7001 \
//!     --peer 127.0.0.1:7002 --peer 127.0.0.1:7003        # and the same for 7002, 7003
//! ```
//!
//! Each node reads commands on stdin and answers on stdout, one line each:
//!
//! | command | answer |
//! |---|---|
//! | `put KEY VALUE` | `ok put KEY replicas=N` (N: the peers that took the write) |
//! | `get KEY` | `value KEY VALUE`, or `none KEY` |
//! | `peers` | `peers ADDR...` (those up now) |
//!
//! and prints `listening on conc://ADDR` once it accepts connections, `peer up ADDR` and
//! `peer down ADDR REASON` as peers come and go.
//!
//! The failure handling a real service needs, and the conc parts it uses:
//!
//! - **Whom to replicate to.** One keeper task per configured peer calls the peer's `kv`
//!   process (by name) for a snapshot of its store, and merges it: a node that starts or
//!   restarts catches up with the others. Then it monitors that process (`Runtime::monitor`): the
//!   `Down` comes when the process exits or its node is lost (a SIGKILLed node: at once on
//!   pooled TCP, whose connection closes). The peer is then down, and the keeper tries again
//!   after a pause. A write goes to the peers up now and does not wait for those that are
//!   down.
//! - **No deadlock between nodes.** The `kv` process never calls another node while handling a
//!   message: a write is applied locally, then a replicator task makes the calls and answers
//!   the client. Two nodes writing at once each serve the other's replication meanwhile.
//! - **Conflicts.** Each value carries a version (a Lamport counter and the writing node's
//!   name); a replica keeps the higher one, so every node ends with the same value whichever
//!   order the writes arrive in (last writer wins).
//! - **Every call has a timeout** (a peer that froze costs at most that), and a failed call
//!   is reported, not retried: the keeper's snapshot repairs the replica when it comes back.
//!
//! The cookie comes from `--cookie-file`, else `$CONC_COOKIE`, else `~/.conc/cookie`.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use conc_node::{Inbox, Node, Pid, ReplyTo, Tcp};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;

/// How long a replication or snapshot call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause before a keeper tries a down peer again.
const RETRY: Duration = Duration::from_millis(200);
/// The name of every node's store process.
const KV: &str = "kv";

#[derive(Parser)]
struct Args {
    /// Where this node listens (`host:port`): its name for the others.
    #[arg(long)]
    listen: String,
    /// Another node of the store (`host:port`); repeat for each.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Read the shared cookie from this file; without it $CONC_COOKIE, else ~/.conc/cookie.
    #[arg(long, value_name = "PATH")]
    cookie_file: Option<PathBuf>,
}

/// Which write a value comes from: higher wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Version {
    counter: u64,
    node: String,
}

/// What a node's `kv` process takes.
#[derive(Serialize, Deserialize)]
enum Kv {
    /// A client's write on this node: applied here, answered with the version to replicate.
    Put {
        key: String,
        value: String,
        reply: ReplyTo<Version>,
    },
    /// A write made on another node.
    Replicate {
        key: String,
        value: String,
        version: Version,
        reply: ReplyTo<()>,
    },
    /// A read.
    Get {
        key: String,
        reply: ReplyTo<Option<String>>,
    },
    /// The whole store, for a peer catching up.
    Snapshot {
        reply: ReplyTo<Vec<(String, String, Version)>>,
    },
    /// Entries from a peer's snapshot.
    Merge(Vec<(String, String, Version)>),
}

/// The store and its Lamport clock.
#[derive(Default)]
struct Store {
    entries: BTreeMap<String, (String, Version)>,
    clock: u64,
}

impl Store {
    /// Keeps `value` under `key` if `version` is newer than what is stored.
    fn apply(&mut self, key: String, value: String, version: Version) {
        self.clock = self.clock.max(version.counter);
        if self.entries.get(&key).is_none_or(|(_, v)| *v < version) {
            self.entries.insert(key, (value, version));
        }
    }
}

/// The store's process: one process, so every change is ordered without a lock.
async fn kv(mut inbox: Inbox<Kv>, me: String) {
    let mut store = Store::default();
    while let Some(msg) = inbox.recv().await {
        match msg {
            Kv::Put { key, value, reply } => {
                let version = Version {
                    counter: store.clock + 1,
                    node: me.clone(),
                };
                store.apply(key, value, version.clone());
                let _ = reply.send(version);
            }
            Kv::Replicate {
                key,
                value,
                version,
                reply,
            } => {
                store.apply(key, value, version);
                let _ = reply.send(());
            }
            Kv::Get { key, reply } => {
                let _ = reply.send(store.entries.get(&key).map(|(v, _)| v.clone()));
            }
            Kv::Snapshot { reply } => {
                let all = store
                    .entries
                    .iter()
                    .map(|(k, (v, ver))| (k.clone(), v.clone(), ver.clone()))
                    .collect();
                let _ = reply.send(all);
            }
            Kv::Merge(entries) => {
                for (k, v, ver) in entries {
                    store.apply(k, v, ver);
                }
            }
        }
    }
}

/// The peers up now.
type Up = Arc<Mutex<HashSet<String>>>;

/// Prints one line and flushes (the test reads stdout line by line).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Keeps track of one peer: catches up from it, then watches it until it goes down; again.
async fn keeper(node: Node, local: Pid<Kv>, peer: String, up: Up) {
    let Ok(remote) = node.remote::<Kv>(&peer, KV) else {
        say(&format!("error bad peer address {peer}"));
        return;
    };
    loop {
        match remote
            .call(|reply| Kv::Snapshot { reply }, CALL_TIMEOUT)
            .await
        {
            Ok(entries) => {
                let _ = local.send(Kv::Merge(entries));
                let down = node.runtime().monitor(&remote);
                up.lock().unwrap().insert(peer.clone());
                say(&format!("peer up {peer}"));
                let down = down.await;
                up.lock().unwrap().remove(&peer);
                say(&format!("peer down {peer} {:?}", down.reason));
            }
            Err(e) => tracing::debug!(%peer, error = %e, "peer not reachable yet"),
        }
        // Pacing between attempts at a peer that is down.
        tokio::time::sleep(RETRY).await;
    }
}

/// A write: applied locally, then replicated to every peer up now; returns how many took it.
async fn put(node: &Node, local: &Pid<Kv>, up: &Up, key: String, value: String) -> usize {
    let version = match local
        .call(
            |reply| Kv::Put {
                key: key.clone(),
                value: value.clone(),
                reply,
            },
            CALL_TIMEOUT,
        )
        .await
    {
        Ok(v) => v,
        Err(e) => {
            say(&format!("error put {key}: {e}"));
            return 0;
        }
    };
    let peers: Vec<String> = up.lock().unwrap().iter().cloned().collect();
    // One call per peer, all at once; the write is answered when each has answered or failed.
    let mut calls = tokio::task::JoinSet::new();
    for peer in peers {
        let Ok(remote) = node.remote::<Kv>(&peer, KV) else {
            continue;
        };
        let (key, value, version) = (key.clone(), value.clone(), version.clone());
        calls.spawn(async move {
            let res = remote
                .call(
                    |reply| Kv::Replicate {
                        key,
                        value,
                        version,
                        reply,
                    },
                    CALL_TIMEOUT,
                )
                .await;
            if let Err(e) = &res {
                tracing::warn!(%peer, error = %e, "replication failed");
            }
            res.is_ok()
        });
    }
    calls.join_all().await.into_iter().filter(|ok| *ok).count()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    examples::init_tracing("warn");
    // The node, built in the open: pooled TCP (one connection per pair of nodes, so a killed
    // peer is seen at once), the cookie from a file or the default lookup.
    let mut builder = Node::builder()
        .listen(&args.listen)
        .transport(Tcp::pooled());
    if let Some(path) = &args.cookie_file {
        builder = builder.cookie_file(path);
    }
    let node = match builder.start().await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("error: cannot start a node on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let me = node.name().to_string();
    let local = node.spawn(move |inbox: Inbox<Kv>| kv(inbox, me));
    if let Err(e) = node.register(KV, &local) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let up: Up = Arc::default();
    for peer in &args.peers {
        tokio::spawn(keeper(
            node.clone(),
            local.clone(),
            peer.clone(),
            up.clone(),
        ));
    }
    say(&format!("listening on {}", node.uri()));

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["put", key, value] => {
                let n = put(&node, &local, &up, key.to_string(), value.to_string()).await;
                say(&format!("ok put {key} replicas={n}"));
            }
            ["get", key] => {
                match local
                    .call(
                        |reply| Kv::Get {
                            key: key.to_string(),
                            reply,
                        },
                        CALL_TIMEOUT,
                    )
                    .await
                {
                    Ok(Some(v)) => say(&format!("value {key} {v}")),
                    Ok(None) => say(&format!("none {key}")),
                    Err(e) => say(&format!("error get {key}: {e}")),
                }
            }
            ["peers"] => {
                let mut peers: Vec<String> = up.lock().unwrap().iter().cloned().collect();
                peers.sort();
                say(&format!("peers {}", peers.join(" ")));
            }
            [] => {}
            _ => say(&format!("error unknown command: {line}")),
        }
    }
    node.shutdown().await;
    ExitCode::SUCCESS
}
