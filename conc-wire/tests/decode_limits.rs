//! Regression tests for bounds on decoding message bodies (found by the `message` fuzz target
//! of conc-fuzz): a recursive message type nested one level per byte overflowed the stack of
//! the decoding thread, and a length prefix claiming 2^60 zero-sized elements kept it busy for
//! years; and an error deep in a nested value made an error message growing eightfold per
//! level (a gigabyte for ten levels). `bin::with_deserializer` now refuses the first two and
//! bounds the message, and still decodes ordinary messages; `bin::decode_body` (the typed
//! codec) gives the same results.

use conc_wire::bin::{self, limits};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Tree {
    Leaf(u8),
    Node(Box<Tree>, Box<Tree>),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Marker;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Message {
    name: String,
    items: Vec<Option<(u32, String)>>,
    map: std::collections::BTreeMap<String, Vec<u8>>,
    tree: Tree,
    marks: Vec<Marker>,
    units: Vec<()>,
}

/// Decodes through type erasure (`bin::with_deserializer`) and with the typed codec
/// (`bin::decode_body`, what a node registers per message type), asserts that both paths
/// agree (same value, or both refuse with a bounded message), and returns the erased result.
fn decode<T: DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Result<T, String> {
    let erased = bin::with_deserializer(bytes, |de| {
        erased_serde::deserialize::<T>(de).map_err(|e| e.to_string())
    });
    let typed = bin::decode_body::<T>(bytes);
    match (&erased, &typed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(e)) => assert!(e.len() <= 2 * limits::MAX_ERROR, "{} bytes", e.len()),
        _ => panic!("the decode paths disagree: erased {erased:?}, typed {typed:?}"),
    }
    erased
}

/// Runs `f` on a thread with the stack of a tokio worker (2 MiB).
fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn deep_tree(levels: usize) -> Tree {
    let mut t = Tree::Leaf(0);
    for _ in 0..levels {
        t = Tree::Node(Box::new(t), Box::new(Tree::Leaf(1)));
    }
    t
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    on_worker_stack(|| {
        // Variant index 1 (Node) a million times: one byte per level.
        let bytes = vec![1u8; 1 << 20];
        let err = decode::<Tree>(&bytes).unwrap_err();
        assert!(err.contains("nests deeper"), "{err}");
        let err = decode::<Option<Box<Tree>>>(&[[1u8].as_slice(), &bytes].concat()).unwrap_err();
        assert!(err.contains("nests deeper"), "{err}");
    });
}

#[test]
fn nesting_within_the_limit_decodes() {
    on_worker_stack(|| {
        let t = deep_tree(limits::MAX_DEPTH / 2 - 2);
        let bytes = bin::encode_to_vec(&t).unwrap();
        assert_eq!(decode::<Tree>(&bytes).unwrap(), t);
    });
}

#[test]
fn a_huge_count_of_zero_sized_elements_is_refused_at_once() {
    // A varint length of 2^60 and nothing else.
    let mut bytes = vec![253u8];
    bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let err = decode::<Vec<()>>(&bytes).unwrap_err();
    assert!(err.contains("sequence elements"), "{err}");
    let err = decode::<Vec<Marker>>(&bytes).unwrap_err();
    assert!(err.contains("sequence elements"), "{err}");
    let err = decode::<std::collections::BTreeSet<()>>(&bytes).unwrap_err();
    assert!(err.contains("sequence elements"), "{err}");
}

#[test]
fn ordinary_messages_decode() {
    let m = Message {
        name: "hello".into(),
        items: vec![None, Some((7, "seven".into()))],
        map: [("k".to_string(), vec![0u8; 100_000])].into(),
        tree: deep_tree(10),
        marks: vec![Marker, Marker, Marker],
        units: vec![(); 10_000],
    };
    let bytes = bin::encode_to_vec(&m).unwrap();
    assert_eq!(decode::<Message>(&bytes).unwrap(), m);
    // A megabyte of bytes is a megabyte of elements: within the allowance.
    let big = vec![5u8; 4 << 20];
    let bytes = bin::encode_to_vec(&big).unwrap();
    assert_eq!(decode::<Vec<u8>>(&bytes).unwrap(), big);
    // Zero-sized elements up to the extra allowance.
    let units = vec![(); limits::EXTRA_ELEMENTS - 16];
    let bytes = bin::encode_to_vec(&units).unwrap();
    assert_eq!(decode::<Vec<()>>(&bytes).unwrap().len(), units.len());
}

#[test]
fn errors_deep_in_a_value_stay_short() {
    // Before the fix the message grew about eightfold per level: 1 MiB at 6 levels, and a
    // gigabyte (and minutes) at 10.
    on_worker_stack(|| {
        for levels in [6usize, 10, 40, limits::MAX_DEPTH / 2 - 4] {
            let t = deep_tree(levels);
            let mut bytes = bin::encode_to_vec(&t).unwrap();
            bytes.truncate(levels);
            let err = decode::<Tree>(&bytes).unwrap_err();
            assert!(
                err.len() < 2 * limits::MAX_ERROR,
                "{levels}: {} bytes",
                err.len()
            );
            assert!(err.contains("UnexpectedEnd"), "{levels}: {err}");
        }
    });
}
