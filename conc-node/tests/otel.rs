//! Feature `otel`: a call made inside a span traced by tracing-opentelemetry's layer reaches the
//! callee in a `conc.recv` span that OpenTelemetry exports as a child of the caller's span, in
//! the caller's trace (the two nodes talk over a real socket; the exporter is the SDK's
//! in-memory one).

#![cfg(feature = "otel")]

use std::time::Duration;

use conc_node::{Cookie, Inbox, Node, ReplyTo};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_call_is_one_opentelemetry_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("conc-test"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();

    let cookie = Cookie::new("otel-test-cookie").unwrap();
    let b = Node::builder()
        .listen("127.0.0.1:0")
        .cookie(cookie.clone())
        .start()
        .await
        .unwrap();
    let p = b.spawn(|mut inbox: Inbox<ReplyTo<()>>| async move {
        while let Some((reply, span)) = inbox.recv_traced().await {
            span.in_scope(|| tracing::info!("handled"));
            // Ended (and exported) before the caller can see the reply.
            drop(span);
            let _ = reply.send(());
        }
    });
    b.register("p", &p).unwrap();
    let a = Node::builder()
        .listen("127.0.0.1:0")
        .cookie(cookie)
        .start()
        .await
        .unwrap();
    let remote = a.remote::<ReplyTo<()>>(b.name(), "p").unwrap();
    // The first call completes the handshake (which agrees on carrying trace contexts).
    remote.call(|r| r, T).await.unwrap();
    {
        let request = tracing::info_span!("request");
        let call = remote.call(|r| r, T);
        tracing::Instrument::instrument(call, request)
            .await
            .unwrap();
    }
    let spans = exporter.get_finished_spans().unwrap();
    let request = spans
        .iter()
        .find(|s| s.name == "request")
        .expect("the caller's span was exported");
    let recv: Vec<_> = spans.iter().filter(|s| s.name == "conc.recv").collect();
    // The first call was made outside any span: it carried nothing, so only one conc.recv.
    assert_eq!(recv.len(), 1, "{spans:#?}");
    let recv = recv[0];
    assert_eq!(
        recv.span_context.trace_id(),
        request.span_context.trace_id()
    );
    assert_eq!(recv.parent_span_id, request.span_context.span_id());
    assert_ne!(recv.span_context.span_id(), request.span_context.span_id());
    a.shutdown().await;
    b.shutdown().await;
}
