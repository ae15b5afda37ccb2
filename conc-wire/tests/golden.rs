//! Golden bytes: the wire format pinned. Every frame kind and the handshake's first messages,
//! encoded from fixed values, must give exactly these bytes. A change here is a change of the
//! wire protocol: bump `handshake::PROTOCOL_VERSION` (older nodes then refuse the new one with
//! a clear error naming both versions) and update the values on purpose.

use conc_core::{ExitReason, ProcessId, ReplyRequest, SendRequest, Target, TypeTag};
use conc_wire::frame::{self, ErrorCode, kind};
use conc_wire::handshake::{Handshake, HandshakeConfig, NONCE_LEN, NodeIdentity};
use conc_wire::trace::TraceParent;
use conc_wire::{Cookie, Frame};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const PID: ProcessId = ProcessId {
    incarnation: 0x0102_0304,
    id: 7,
};

/// Each frame as encoded, with the frame it must decode back to.
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    let mut out = Vec::new();
    let body: [u8; 3] = [1, 2, 3];
    let target = Target::Name("echo".into());
    let send = SendRequest {
        target: &target,
        tag: TypeTag(0x1122_3344_5566_7788),
        call_ref: Some(9),
        body: &body,
        encode: None,
    };
    frame::encode_send(&mut out, &send, 1 << 20).unwrap();
    v.push(("send", std::mem::take(&mut out)));
    let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        .parse()
        .unwrap();
    frame::encode_send_traced(&mut out, &send, &tp, 1 << 20).unwrap();
    v.push(("send-traced", std::mem::take(&mut out)));
    let reply = ReplyRequest {
        incarnation: 5,
        reply_id: 6,
        tag: TypeTag(42),
        body: &body,
    };
    frame::encode_reply(&mut out, &reply, 1 << 20).unwrap();
    v.push(("reply", std::mem::take(&mut out)));
    frame::encode_reply_dropped(&mut out, 5, 6, true).unwrap();
    v.push(("reply-dropped", std::mem::take(&mut out)));
    frame::encode_reply_failed(&mut out, 5, 6, ErrorCode::ReplyTooLarge).unwrap();
    v.push(("reply-failed", std::mem::take(&mut out)));
    frame::encode_error(&mut out, Some(9), ErrorCode::UnknownName, "x").unwrap();
    v.push(("error", std::mem::take(&mut out)));
    frame::encode_monitor(&mut out, &Target::Id(PID), 11, false).unwrap();
    v.push(("monitor", std::mem::take(&mut out)));
    frame::encode_monitor(&mut out, &Target::Id(PID), 11, true).unwrap();
    v.push(("demonitor", std::mem::take(&mut out)));
    frame::encode_down(&mut out, 11, PID, &ExitReason::Killed).unwrap();
    v.push(("down", std::mem::take(&mut out)));
    frame::encode_link(&mut out, &target, PID, false).unwrap();
    v.push(("link", std::mem::take(&mut out)));
    frame::encode_link(&mut out, &target, PID, true).unwrap();
    v.push(("unlink", std::mem::take(&mut out)));
    frame::encode_linked(&mut out, "echo", PID, PID).unwrap();
    v.push(("linked", std::mem::take(&mut out)));
    frame::encode_link_exit(&mut out, &Target::Id(PID), PID, &ExitReason::NoConnection).unwrap();
    v.push(("link-exit", std::mem::take(&mut out)));
    frame::encode_kill(&mut out, &Target::Id(PID)).unwrap();
    v.push(("kill", std::mem::take(&mut out)));
    frame::encode_exit(&mut out, &Target::Id(PID), PID, &ExitReason::Shutdown).unwrap();
    v.push(("exit", std::mem::take(&mut out)));
    for (name, k) in [
        ("ack", kind::ACK),
        ("ping", kind::PING),
        ("pong", kind::PONG),
        ("goodbye", kind::GOODBYE),
    ] {
        frame::encode_bare(&mut out, k);
        v.push((name, std::mem::take(&mut out)));
    }
    frame::encode_lane(&mut out, 3).unwrap();
    v.push(("lane", std::mem::take(&mut out)));
    frame::encode_barrier(&mut out, &[1, 300]).unwrap();
    v.push(("barrier", std::mem::take(&mut out)));
    frame::encode_fragment(&mut out, false, &[0x10, 1]);
    v.push(("fragment", std::mem::take(&mut out)));
    frame::encode_fragment(&mut out, true, &[2, 3]);
    v.push(("fragment-end", std::mem::take(&mut out)));
    frame::encode_retire(&mut out, 5).unwrap();
    v.push(("retire", std::mem::take(&mut out)));
    v
}

fn hello() -> Vec<u8> {
    let config = HandshakeConfig::new(
        Cookie::new("golden").unwrap(),
        NodeIdentity {
            name: "127.0.0.1:9000".into(),
            incarnation: 1,
        },
    );
    let mut c = Handshake::client(config, [0xab; NONCE_LEN]);
    c.poll_transmit().unwrap()
}

const GOLDEN: &[(&str, &str)] = &[
    ("send", "000000151001046563686ffd88776655443322110109010203"),
    (
        "send-traced",
        "0000002f15004bf92f3577b34da6a3ce929d0e0e473600f067aa0ba902b70101046563686ffd88776655443322110109010203",
    ),
    ("reply", "000000071105062a010203"),
    ("reply-dropped", "0000000412050601"),
    ("reply-failed", "0000000414050608"),
    ("error", "00000006130109010178"),
    ("monitor", "000000094000fc04030201070b"),
    ("demonitor", "000000094100fc04030201070b"),
    ("down", "00000009420bfc040302010702"),
    ("link", "0000000d4301046563686ffc0403020107"),
    ("unlink", "0000000d4401046563686ffc0403020107"),
    ("linked", "0000001246046563686ffc0403020107fc0403020107"),
    ("link-exit", "0000000f4500fc0403020107fc040302010704"),
    ("kill", "000000084700fc0403020107"),
    ("exit", "0000000f4800fc0403020107fc040302010706"),
    ("ack", "0000000120"),
    ("ping", "0000000130"),
    ("pong", "0000000131"),
    ("goodbye", "0000000150"),
    ("lane", "000000026003"),
    ("barrier", "00000006610201fb2c01"),
    ("fragment", "00000003621001"),
    ("fragment-end", "00000003630203"),
    ("retire", "000000026405"),
];

/// Tag 1, magic "conc", versions 4..=4, capability flags 15 (`TRACE_CONTEXT`, fragments, exit
/// signals, handover), the client's nonce.
const HELLO: &str =
    "01636f6e6304040fabababababababababababababababababababababababababababababababab";

#[test]
fn frames_encode_to_the_pinned_bytes() {
    let got = frames();
    assert_eq!(got.len(), GOLDEN.len());
    for ((name, bytes), (golden_name, golden)) in got.iter().zip(GOLDEN) {
        assert_eq!(name, golden_name);
        assert_eq!(hex(bytes), *golden, "the wire encoding of {name} changed");
        // And they decode to frames of their kind.
        let frame = Frame::decode(&bytes[frame::LEN_PREFIX..]).unwrap();
        assert_eq!(frame.kind_name(), *name);
    }
}

#[test]
fn the_handshake_opens_with_the_pinned_hello() {
    assert_eq!(
        hex(&hello()),
        HELLO,
        "the handshake's first message changed"
    );
}
