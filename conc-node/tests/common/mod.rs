//! What the node test files share: the macro that runs each test once per transport.

/// Instantiates every listed `async fn(transport: &str)` as one `#[tokio::test]` per
/// transport: per-message TCP, pooled TCP, and pooled TCP with TLS and QUIC when their features
/// are on; each test module is named after its transport.
macro_rules! suite {
    ($($f:ident),* $(,)?) => {
        mod per_message_tcp {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $f() { super::$f("per-message-tcp").await })*
        }
        mod pooled_tcp {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $f() { super::$f("pooled-tcp").await })*
        }
        #[cfg(feature = "tls")]
        mod pooled_tcp_tls {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $f() { super::$f("pooled-tcp-tls").await })*
        }
        #[cfg(feature = "quic")]
        mod quic {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $f() { super::$f("quic").await })*
        }
    };
}

pub(crate) use suite;
