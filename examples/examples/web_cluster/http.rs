//! The front's HTTP side (axum): the session page, the chat form, the stats page and the
//! restart button, rendered as plain HTML.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the session page: forwards a `View` call to the session process |
//! | `POST /chat` | posts a line (form field `line`) through the session process, then redirects to `/` |
//! | `GET /new` | forgets the `sid` cookie and redirects to `/` (a new session) |
//! | `GET /stats` | the stats of every node, from their `conc.admin` processes |
//! | `POST /admin/restart/{n}` | starts worker `n` again on its old port, if its process is not running |

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use conc_node::admin::{ADMIN_NAME, AdminRequest, StatsReport, epoch_seconds};
use conc_node::{CallError, Message, ReplyTo};
use serde::Deserialize;

use crate::front::{CALL_TIMEOUT, Front, is_connection_error, valid_sid};
use crate::msgs::{MAX_LINE_CHARS, SessionRequest, View};

/// The session cookie's name.
const COOKIE: &str = "sid";
/// How long the stats page waits for each node.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);
/// The phrase of the page a session gets while its worker is down (scripts look for it).
pub(crate) const WORKER_DOWN: &str = "your session's worker is down";

/// The front's routes; `/metrics` renders the front node's metrics in Prometheus's text
/// format.
pub(crate) fn router(
    front: Arc<Front>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Router {
    Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/", get(index))
        .route("/chat", post(chat))
        .route("/new", get(new_session))
        .route("/stats", get(stats))
        .route("/admin/restart/{n}", post(restart))
        .with_state(front)
}

/// The `sid` cookie of a request, if it is well-formed.
fn sid_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| valid_sid(v))
}

/// How forwarding a request to a session process went.
enum Outcome<R> {
    /// The session answered.
    Answered {
        sid: String,
        /// The session is new: set the cookie.
        fresh: bool,
        value: R,
        /// Something to tell the user (a lost session replaced by a new one).
        notice: Option<String>,
    },
    /// The session's worker is down.
    WorkerDown { worker: usize, detail: String },
    /// The session's worker did not answer in time.
    NotAnswering { worker: usize, detail: String },
    /// No session could be made.
    Unavailable(String),
}

/// Finds (or makes) the browser's session and calls it. A session whose worker is down fails
/// with [`Outcome::WorkerDown`]; a session whose process is gone while its worker is up (the
/// worker restarted, or the session idled out) is replaced by a new one.
async fn with_session<R: Message>(
    front: &Front,
    sid: Option<String>,
    make: impl Fn(ReplyTo<R>) -> SessionRequest,
) -> Outcome<R> {
    let known = sid.and_then(|sid| front.session(&sid).map(|entry| (sid, entry)));
    let (mut sid, mut entry, mut fresh) = match known {
        Some((sid, entry)) => (sid, entry, false),
        None => match front.create_session().await {
            Ok((sid, entry)) => (sid, entry, true),
            Err(e) => return Outcome::Unavailable(e),
        },
    };
    let mut notice = None;
    // A session whose worker is lost is started again elsewhere by the sessions' supervisor:
    // wait for that (bounded) rather than fail, at most twice per request.
    let mut replacements = 0;
    loop {
        if !front.is_up(entry.worker) {
            let worker = entry.worker;
            match front.replacement(&sid, &entry.pid).await {
                Some(next) if replacements < 2 => {
                    replacements += 1;
                    entry = next;
                    continue;
                }
                _ => {
                    return Outcome::WorkerDown {
                        worker,
                        detail: "the front sees it down".to_string(),
                    };
                }
            }
        }
        match entry.pid.call(&make, CALL_TIMEOUT).await {
            Ok(value) => {
                return Outcome::Answered {
                    sid,
                    fresh,
                    value,
                    notice,
                };
            }
            Err(e) if is_connection_error(&e) => {
                front.mark_down(entry.worker, e.to_string());
                match front.replacement(&sid, &entry.pid).await {
                    Some(next) if replacements < 2 => {
                        replacements += 1;
                        entry = next;
                    }
                    _ => {
                        return Outcome::WorkerDown {
                            worker: entry.worker,
                            detail: e.to_string(),
                        };
                    }
                }
            }
            Err(e @ CallError::Timeout(_)) => {
                return Outcome::NotAnswering {
                    worker: entry.worker,
                    detail: e.to_string(),
                };
            }
            Err(e) => {
                front.forget(&sid);
                if fresh {
                    // A session made just now failed: do not loop.
                    return Outcome::Unavailable(format!(
                        "a new session on worker {} failed: {e}",
                        entry.worker
                    ));
                }
                notice = Some(format!(
                    "Your previous session on worker {} was lost ({e}); this is a new one.",
                    entry.worker
                ));
                (sid, entry) = match front.create_session().await {
                    Ok(made) => made,
                    Err(e) => return Outcome::Unavailable(e),
                };
                fresh = true;
            }
        }
    }
}

/// Adds `Set-Cookie` for a new session.
fn with_cookie(mut response: Response, sid: &str, fresh: bool) -> Response {
    if fresh
        && let Ok(v) =
            HeaderValue::from_str(&format!("{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Lax"))
    {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// The page of a failed session request.
fn failure(front: &Front, outcome_worker: Option<usize>, title: &str, detail: &str) -> Response {
    let mut body = String::new();
    let _ = write!(body, "<section class=\"card fail\"><h2>{}</h2>", esc(title));
    if let Some(n) = outcome_worker {
        let node = front
            .addr(n)
            .map(|a| format!(" (<code>conc://{}</code>)", esc(&a)))
            .unwrap_or_default();
        let _ = write!(
            body,
            "<p>Your session lives on worker <span id=\"worker\">{n}</span>{node}, which cannot \
             serve it now: {}.</p><p>Sessions on the other workers keep working. Reload when \
             the worker is back, or <a href=\"/new\">start a new session</a> on a live worker \
             (your counter starts again).</p>",
            esc(detail)
        );
    } else {
        let _ = write!(body, "<p>{}</p>", esc(detail));
    }
    body.push_str("</section>");
    body.push_str(&workers_bar(front));
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        Html(page(front, title, &body)),
    )
        .into_response();
    if let Some(n) = outcome_worker
        && let Ok(v) = HeaderValue::from_str(&n.to_string())
    {
        response.headers_mut().insert("x-conc-worker", v);
    }
    response
}

/// The response for an outcome that is not an answer.
fn failed<R>(front: &Front, outcome: Outcome<R>) -> Response {
    match outcome {
        Outcome::WorkerDown { worker, detail } => failure(
            front,
            Some(worker),
            &format!("503 — {WORKER_DOWN}"),
            &detail,
        ),
        Outcome::NotAnswering { worker, detail } => failure(
            front,
            Some(worker),
            "503 — your session's worker is not answering",
            &detail,
        ),
        Outcome::Unavailable(detail) => failure(
            front,
            None,
            "503 — no session could be started",
            &format!("No live worker could take a new session: {detail}"),
        ),
        Outcome::Answered { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, "unexpected outcome").into_response()
        }
    }
}

/// `GET /`: the session page.
async fn index(State(front): State<Arc<Front>>, headers: HeaderMap) -> Response {
    match with_session(&front, sid_of(&headers), SessionRequest::View).await {
        Outcome::Answered {
            sid,
            fresh,
            value,
            notice,
        } => {
            let worker = value.worker;
            let mut response =
                Html(session_page(&front, &value, notice.as_deref())).into_response();
            if let Ok(v) = HeaderValue::from_str(&worker.to_string()) {
                response.headers_mut().insert("x-conc-worker", v);
            }
            with_cookie(response, &sid, fresh)
        }
        other => failed(&front, other),
    }
}

/// The chat form.
#[derive(Debug, Deserialize)]
struct ChatForm {
    line: String,
}

/// `POST /chat`: posts a line through the session, then back to `/`.
async fn chat(
    State(front): State<Arc<Front>>,
    headers: HeaderMap,
    Form(form): Form<ChatForm>,
) -> Response {
    let line: String = form.line.trim().chars().take(MAX_LINE_CHARS).collect();
    let sid = sid_of(&headers);
    if line.is_empty() {
        return Redirect::to("/").into_response();
    }
    let outcome = with_session(&front, sid, |reply| SessionRequest::Post {
        line: line.clone(),
        reply,
    })
    .await;
    match outcome {
        Outcome::Answered { sid, fresh, .. } => {
            with_cookie(Redirect::to("/").into_response(), &sid, fresh)
        }
        other => failed(&front, other),
    }
}

/// `GET /new`: drops the session cookie (and the front's entry) and starts over.
async fn new_session(State(front): State<Arc<Front>>, headers: HeaderMap) -> Response {
    if let Some(sid) = sid_of(&headers) {
        front.forget(&sid);
    }
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("sid=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"),
    );
    response
}

/// `POST /admin/restart/{n}`: starts worker `n` again on its old port.
async fn restart(State(front): State<Arc<Front>>, Path(n): Path<usize>) -> Response {
    if n >= front.worker_count() {
        return (StatusCode::NOT_FOUND, format!("no worker {n}\n")).into_response();
    }
    match front.start_worker(n).await {
        Ok((pid, uri)) => {
            let state = if front.is_up(n) {
                "It is up and takes new sessions."
            } else {
                "It does not answer yet; it will take new sessions once a probe reaches it."
            };
            let body = format!(
                "<section class=\"card\"><h2>Worker {n} restarted</h2><p id=\"restarted\">worker \
                 {n} pid {pid} {}</p><p>{state}</p><p><a href=\"/stats\">back to the stats</a>\
                 </p></section>",
                esc(&uri)
            );
            Html(page(&front, "worker restarted", &body)).into_response()
        }
        Err(e) if e.contains("is running") => (StatusCode::CONFLICT, e + "\n").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e + "\n").into_response(),
    }
}

/// `GET /stats`: every node's stats, from its `conc.admin` process.
async fn stats(State(front): State<Arc<Front>>) -> Html<String> {
    let status = front.status();
    let counts = front.sessions_per_worker();
    // The front's own admin process, then each worker's, all at once.
    let mut calls = Vec::new();
    let front_admin = front.node.whereis::<AdminRequest>(ADMIN_NAME).ok();
    calls.push(tokio::spawn(async move {
        match front_admin {
            Some(pid) => pid
                .call(AdminRequest::Stats, STATS_TIMEOUT)
                .await
                .map_err(|e| e.to_string()),
            None => Err(format!("{ADMIN_NAME} is not running")),
        }
    }));
    for w in &status {
        let admin = w
            .addr
            .as_deref()
            .filter(|_| w.up)
            .and_then(|a| front.node.remote::<AdminRequest>(a, ADMIN_NAME).ok());
        calls.push(tokio::spawn(async move {
            match admin {
                Some(pid) => pid
                    .call(AdminRequest::Stats, STATS_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("down".to_string()),
            }
        }));
    }
    let mut reports: Vec<Result<StatsReport, String>> = Vec::new();
    for call in calls {
        reports.push(call.await.unwrap_or_else(|e| Err(e.to_string())));
    }

    let now = SystemTime::now();
    let mut body = String::new();
    body.push_str(
        "<section class=\"card wide\"><h2>Nodes</h2><table class=\"grid\"><tr><th>role</th>\
         <th>node</th><th>status</th><th>os pid</th><th>transport</th><th>processes</th>\
         <th>sessions</th><th>registered names</th><th>dead letters</th><th>rejected</th>\
         <th>late replies</th></tr>",
    );
    for (i, report) in reports.iter().enumerate() {
        let (role, node, state, os_pid, sessions) = if i == 0 {
            (
                "front".to_string(),
                front.node.uri(),
                "up".to_string(),
                std::process::id().to_string(),
                counts.iter().sum::<usize>().to_string(),
            )
        } else {
            let w = &status[i - 1];
            let since = w
                .since
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| format!(" for {}s", d.as_secs()))
                .unwrap_or_default();
            let state = if w.up {
                format!("up{since}")
            } else {
                format!("down{since}")
            };
            (
                format!("worker {}", w.n),
                w.addr
                    .as_deref()
                    .map(|a| format!("conc://{a}"))
                    .unwrap_or_else(|| "-".into()),
                state,
                w.os_pid
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                counts.get(w.n).copied().unwrap_or(0).to_string(),
            )
        };
        let class = if state.starts_with("up") {
            "up"
        } else {
            "down"
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td><code>{}</code></td><td class=\"{class}\">{}</td><td>{}</td>",
            esc(&role),
            esc(&node),
            esc(&state),
            esc(&os_pid)
        );
        match report {
            Ok(r) => {
                let _ = write!(
                    body,
                    "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                    esc(&r.transport),
                    r.processes,
                    esc(&sessions),
                    esc(&r.registered.join(", ")),
                    esc(&counts_text(&r.dead_letters)),
                    esc(&counts_text(&r.rejected)),
                    r.late_replies
                );
            }
            Err(e) => {
                // For a down worker, why the front sees it down.
                let why = match i.checked_sub(1).map(|w| &status[w]) {
                    Some(w) if !w.up => w.reason.as_deref().unwrap_or(e),
                    _ => e,
                };
                let restart = if i > 0 && status[i - 1].os_pid.is_none() {
                    format!(
                        " <form class=\"inline\" method=\"post\" action=\"/admin/restart/{}\">\
                         <button>restart</button></form>",
                        status[i - 1].n
                    )
                } else {
                    String::new()
                };
                let _ = write!(
                    body,
                    "<td colspan=\"7\" class=\"muted\">no stats: {}{restart}</td>",
                    esc(why)
                );
            }
        }
        body.push_str("</tr>");
    }
    body.push_str("</table></section>");

    for report in reports.iter().flatten() {
        let _ = write!(
            body,
            "<section class=\"card wide\"><h2>Peers of <code>conc://{}</code></h2>",
            esc(&report.name)
        );
        if report.peers.is_empty() {
            body.push_str("<p class=\"muted\">no peers</p></section>");
            continue;
        }
        body.push_str(
            "<table class=\"grid\"><tr><th>peer</th><th>connected since</th><th>msgs in</th>\
             <th>msgs out</th><th>bytes in</th><th>bytes out</th></tr>",
        );
        for p in &report.peers {
            let since = p
                .connected_since
                .map(|s| ago(epoch_seconds(now), s))
                .unwrap_or_else(|| "-".into());
            let _ = write!(
                body,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td></tr>",
                esc(&p.name),
                esc(&since),
                p.msgs_in,
                p.msgs_out,
                p.bytes_in,
                p.bytes_out
            );
        }
        body.push_str("</table></section>");
    }
    body.push_str(
        "<p class=\"muted\">Per-peer queue depth is not reported: the node does not expose it \
         yet. Reload to refresh.</p>",
    );
    Html(page(&front, "stats", &body))
}

/// `reason n, reason n`, or `0`.
fn counts_text(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "0".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `HH:MM:SS UTC (Ns ago)` for a time in seconds since the epoch.
fn ago(now: u64, then: u64) -> String {
    let day = then % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC ({}s ago)",
        day / 3600,
        day % 3600 / 60,
        day % 60,
        now.saturating_sub(then)
    )
}

/// The session page.
fn session_page(front: &Front, view: &View, notice: Option<&str>) -> String {
    let mut body = String::new();
    for n in notice.into_iter().chain(view.notice.as_deref()) {
        let _ = write!(body, "<p class=\"notice\">{}</p>", esc(n));
    }
    let _ = write!(
        body,
        "<section class=\"card\"><h2>Your session</h2>\
         <p class=\"big\"><span id=\"views\">{}</span> <small>page views</small></p>\
         <table><tr><th>nick</th><td id=\"nick\">{}</td></tr>\
         <tr><th>lives on</th><td>worker <span id=\"worker\">{}</span> · <code>{}</code></td></tr>\
         <tr><th>process</th><td><code id=\"pid\">{}</code></td></tr>\
         <tr><th>lines posted</th><td>{}</td></tr></table></section>",
        view.views,
        esc(&view.nick),
        view.worker,
        esc(&view.node),
        esc(&view.pid),
        view.posts
    );
    body.push_str(
        "<section class=\"card\"><h2>Chat room <small>process <code>chat</code> on worker 0\
         </small></h2>",
    );
    match &view.chat {
        Ok(lines) if lines.is_empty() => {
            body.push_str("<p class=\"muted\">Nobody has said anything yet.</p>")
        }
        Ok(lines) => {
            body.push_str("<ol class=\"chat\">");
            for l in lines {
                let _ = write!(
                    body,
                    "<li><b>{}</b> <span class=\"w\">w{}</span> {}</li>",
                    esc(&l.who),
                    l.worker,
                    esc(&l.text)
                );
            }
            body.push_str("</ol>");
        }
        Err(e) => {
            let _ = write!(body, "<p class=\"fail\">{}</p>", esc(e));
        }
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/chat\"><input name=\"line\" maxlength=\"{MAX_LINE_CHARS}\" \
         placeholder=\"Say something\" autocomplete=\"off\" autofocus><button>Post</button></form>\
         </section>"
    );
    body.push_str(&workers_bar(front));
    page(front, "session", &body)
}

/// The workers and how they are, with the session counts.
fn workers_bar(front: &Front) -> String {
    let counts = front.sessions_per_worker();
    let mut s = String::from("<p class=\"workers\">workers: ");
    for w in front.status() {
        let (class, state) = if w.up { ("up", "up") } else { ("down", "down") };
        let _ = write!(
            s,
            "<span class=\"pill {class}\">worker {} {state} · {} sessions</span> ",
            w.n,
            counts.get(w.n).copied().unwrap_or(0)
        );
    }
    s.push_str("</p>");
    s
}

/// A whole page around `body`.
fn page(front: &Front, title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>conc web cluster — {title}</title><style>{STYLE}</style></head><body>\
         <header><h1>conc web cluster</h1><nav><a href=\"/\">session</a> \
         <a href=\"/stats\">stats</a> <a href=\"/new\">new session</a></nav></header>\
         <main>{body}</main><footer>front node <code>{node}</code> · sessions are conc processes \
         placed on workers by consistent hashing of the session id</footer></body></html>",
        title = esc(title),
        node = esc(&front.node.uri()),
    )
}

/// Escapes text for HTML element content and double-quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}\
header{display:flex;align-items:baseline;gap:2em;padding:.8em 2em;background:#1d2330;color:#fff}\
header h1{font-size:1.3em;margin:0}header nav a{color:#9cc4ff;margin-right:1.2em;text-decoration:none}\
main{display:flex;flex-wrap:wrap;gap:1.2em;padding:1.2em 2em;align-items:flex-start}\
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:1em 1.4em;min-width:300px;flex:1}\
.card.wide{flex-basis:100%;overflow-x:auto}.card h2{font-size:1.05em;margin:.2em 0 .8em}\
.big{font-size:2.6em;margin:.1em 0 .4em;font-weight:600}.big small{font-size:.4em;color:#667;font-weight:400}\
th{text-align:left;color:#667;font-weight:500;padding:.25em 1em .25em 0;white-space:nowrap}td{padding:.25em 1em .25em 0}\
table.grid{border-collapse:collapse;width:100%}table.grid td:first-child{white-space:nowrap}table.grid th,table.grid td{border-bottom:1px solid #e4e6eb;padding:.35em .6em}\
code{font-size:.88em;background:#eef1f5;padding:.1em .3em;border-radius:3px}\
ol.chat{padding-left:1.4em;max-height:22em;overflow:auto}ol.chat li{margin:.2em 0}\
.w{font-size:.75em;color:#fff;background:#6b7a99;border-radius:3px;padding:0 .3em}\
form{display:flex;gap:.5em;margin-top:.8em}form.inline{display:inline;margin:0}\
input{flex:1;padding:.5em;border:1px solid #c9ced8;border-radius:5px;font-size:1em}\
button{padding:.5em 1.1em;border:0;border-radius:5px;background:#2f6fdf;color:#fff;font-size:1em;cursor:pointer}\
.workers{flex-basis:100%;margin:0}.pill{display:inline-block;border-radius:12px;padding:.2em .8em;margin-right:.5em;font-size:.9em}\
.pill.up,td.up{background:#dff5e3;color:#17692b}.pill.down,td.down{background:#fde2e1;color:#9b1c1c}\
.notice{flex-basis:100%;background:#fff6d6;border:1px solid #f0d77a;border-radius:6px;padding:.6em 1em;margin:0}\
.fail{color:#9b1c1c}.card.fail{border-left:5px solid #d33}.muted{color:#778}\
footer{padding:.5em 2em 2em;color:#778;font-size:.85em}";
