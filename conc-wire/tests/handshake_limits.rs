//! Regression test (from the hostile-peer suite): before the handshake completes, a frame
//! larger than a handshake message is refused as soon as its length prefix arrives, instead
//! of being buffered up to the frame limit.

use std::time::Duration;

use conc_wire::frame::{FrameError, kind};
use conc_wire::handshake::{Handshake, HandshakeConfig, NodeIdentity};
use conc_wire::io::{FrameReader, IoError, run_handshake};
use tokio::io::AsyncWriteExt;

fn server() -> Handshake {
    let config = HandshakeConfig::new(
        "secret".parse().unwrap(),
        NodeIdentity {
            name: "127.0.0.1:9000".into(),
            incarnation: 1,
        },
    );
    Handshake::server(config, [7; 32])
}

#[tokio::test]
async fn a_big_frame_is_refused_before_the_handshake() {
    let (mut ours, mut theirs) = tokio::io::duplex(64 << 10);
    // A "handshake frame" of 1 MiB, of which only the first bytes are sent.
    let mut start = (1u32 << 20).to_be_bytes().to_vec();
    start.push(kind::HANDSHAKE);
    start.extend_from_slice(&[0; 100]);
    theirs.write_all(&start).await.unwrap();
    let mut reader = FrameReader::new(8 << 20);
    let res = run_handshake(&mut ours, &mut reader, server(), Duration::from_secs(30)).await;
    match res {
        Err(IoError::Frame(FrameError::TooLarge { len, max })) => {
            assert_eq!(len, 1 << 20);
            assert!(max < 64 << 10, "handshake frames limited to {max} bytes");
        }
        other => panic!("expected a refusal of the frame, got {other:?}"),
    }
}

#[tokio::test]
async fn the_frame_limit_is_back_after_the_handshake() {
    // The reader keeps its full limit for what follows: a failed handshake restores it too.
    let (mut ours, mut theirs) = tokio::io::duplex(1024);
    theirs.write_all(&[0, 0, 0, 2, 0xee, 0]).await.unwrap();
    let mut reader = FrameReader::new(8 << 20);
    assert!(
        run_handshake(&mut ours, &mut reader, server(), Duration::from_secs(30))
            .await
            .is_err()
    );
    drop(theirs);
    let mut big = (4u32 << 20).to_be_bytes().to_vec();
    big.push(kind::PING);
    let (mut a, mut b) = tokio::io::duplex(1024);
    b.write_all(&big).await.unwrap();
    drop(b);
    // Over the handshake limit but under the frame limit: not refused, only incomplete.
    assert!(matches!(reader.next(&mut a).await, Err(IoError::Closed)));
}
