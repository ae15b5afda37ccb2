//! Message-type tags: a 64-bit fingerprint of a message type's serde shape, used to refuse a
//! frame whose type does not match the process it is addressed to.

use std::fmt;

/// A fingerprint of a message type, carried by every pid and every remote frame.
///
/// The tag is the FNV-1a hash (64 bits) of the type's *serde shape*: a canonical text made by
/// driving the type's own `Deserialize` through a tracing deserializer. It holds every
/// primitive by kind, options, sequences, maps and tuples with their elements' shapes, and every
/// named container by its serde name, with its fields' names in order (structs) or its
/// variants' names, order and contents (enums). It holds no module path and no Rust type name,
/// so:
/// - the same type compiled into two programs, or by two compiler versions, has the same tag
///   (`std::any::type_name` is not guaranteed stable; the shape is);
/// - two types that differ in what goes on the wire have different tags: a copy of a message
///   enum with two fields swapped or two variants reordered is refused with a type mismatch
///   instead of being decoded as the other;
/// - two types with the same shape share a tag (they are the same on the wire).
///
/// A type whose `Deserialize` cannot be traced (one that asks for `deserialize_any`, as serde's
/// untagged, internally tagged and flattened forms do; one that validates and refuses the
/// tracer's sample values; one that contains itself through an `Option` in a struct) falls
/// back to the hash of its type name with module paths removed ([`TypeTag::of_name`]), which is
/// what tags were before protocol version 4. Pids and reply handles inside a message count as
/// their wire form (a pid of any type has the same shape: the pid carries its own tag, checked
/// when it is decoded). The golden values in this module's tests pin the computation.
///
/// Computing a tag traces the type, which takes microseconds; a node computes each type's tag
/// once and keeps it.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TypeTag(pub u64);

impl TypeTag {
    /// The tag of `T`, from its serde shape (or its name, for a type whose shape cannot be
    /// traced). Computed anew on each call; see [`TypeTag::shape_of`] for the text hashed.
    pub fn of<T: serde::de::DeserializeOwned + 'static>() -> TypeTag {
        match crate::shape::shape_of::<T>() {
            Some(shape) => TypeTag(fnv1a(shape.as_bytes())),
            None => TypeTag::of_name(std::any::type_name::<T>()),
        }
    }

    /// The canonical shape text of `T` that [`TypeTag::of`] hashes, or `None` if `T`'s
    /// `Deserialize` cannot be traced (then the tag comes from the type's name). For reading
    /// and for tests; its exact form may change only with the protocol version.
    pub fn shape_of<T: serde::de::DeserializeOwned + 'static>() -> Option<String> {
        crate::shape::shape_of::<T>()
    }

    /// The name-based tag of a type given its full name as printed by [`std::any::type_name`]:
    /// the FNV-1a hash of the name with module paths removed (`alloc::vec::Vec<my_app::Ping>`
    /// hashes as `Vec<Ping>`). [`TypeTag::of`] falls back to it for types it cannot trace.
    pub fn of_name(name: &str) -> TypeTag {
        // The FNV-1a hash of `short_type_name(name)`, computed without allocating: an
        // identifier followed by `::` is a path segment and is skipped.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let bytes = name.as_bytes();
        let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80;
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            let segment = if i > start && bytes[i..].starts_with(b"::") {
                i += 2;
                &[][..]
            } else if i > start {
                &bytes[start..i]
            } else if bytes[i..].starts_with(b"::") {
                i += 2;
                &[][..]
            } else {
                i += 1;
                &bytes[start..i]
            };
            for &byte in segment {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        TypeTag(hash)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl fmt::Debug for TypeTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TypeTag({:016x})", self.0)
    }
}

impl fmt::Display for TypeTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Removes every module path from a type name: `a::b::C<d::E>` becomes `C<E>`.
pub fn short_type_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut segment_start = 0;
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.truncate(segment_start);
            continue;
        }
        out.push(c);
        if !(c.is_alphanumeric() || c == '_') {
            segment_start = out.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_removed() {
        assert_eq!(
            short_type_name("alloc::vec::Vec<my_app::msgs::Ping>"),
            "Vec<Ping>"
        );
        assert_eq!(short_type_name("(u8, a::B)"), "(u8, B)");
        assert_eq!(short_type_name("Plain"), "Plain");
    }

    #[test]
    fn hash_matches_the_short_name() {
        for name in [
            "alloc::vec::Vec<my_app::msgs::Ping>",
            "(u8, a::B)",
            "Plain",
            "[u8; 32]",
            "core::option::Option<(alloc::string::String, conc_core::call::ReplyTo<u64>)>",
            "fn(&a::B) -> c::D",
        ] {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for byte in short_type_name(name).bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
            assert_eq!(TypeTag::of_name(name), TypeTag(hash), "{name}");
        }
    }

    mod one {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub(super) enum Store {
            Put { key: String, value: String },
            Get(String),
        }
    }
    mod two {
        // The same wire form, another module: the same tag.
        #[derive(serde::Serialize, serde::Deserialize)]
        pub(super) enum Store {
            Put { key: String, value: String },
            Get(String),
        }
    }
    mod swapped {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub(super) enum Store {
            Put { value: String, key: String },
            Get(String),
        }
    }
    mod reordered {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub(super) enum Store {
            Get(String),
            Put { key: String, value: String },
        }
    }
    mod other_fields {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub(super) struct Ping {
            pub(super) n: u32,
        }
    }
    mod more_fields {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub(super) struct Ping {
            pub(super) n: u32,
            pub(super) from: String,
        }
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    enum Tree {
        Leaf(u32),
        Node(Box<Tree>, Box<Tree>),
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    enum List {
        Cons(u32, Box<List>),
        Nil,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Dir {
        name: String,
        children: Vec<Dir>,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    enum Msg {
        Ping(crate::Pid<Msg>),
        Ask(String, crate::ReplyTo<u64>),
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(untagged)]
    enum Untagged {
        A(u32),
        B(String),
    }

    #[test]
    fn same_shape_same_tag_across_modules() {
        assert_eq!(TypeTag::of::<one::Store>(), TypeTag::of::<two::Store>());
    }

    #[test]
    fn swapped_fields_reordered_variants_and_other_fields_differ() {
        let tag = TypeTag::of::<one::Store>();
        assert_ne!(tag, TypeTag::of::<swapped::Store>());
        assert_ne!(tag, TypeTag::of::<reordered::Store>());
        assert_ne!(
            TypeTag::of::<other_fields::Ping>(),
            TypeTag::of::<more_fields::Ping>()
        );
        assert_ne!(TypeTag::of::<Vec<u32>>(), TypeTag::of::<Vec<u64>>());
        assert_ne!(TypeTag::of::<Option<u8>>(), TypeTag::of::<Option<i8>>());
        assert_ne!(TypeTag::of::<(u8, String)>(), TypeTag::of::<(String, u8)>());
    }

    #[test]
    fn the_shape_text() {
        assert_eq!(
            TypeTag::shape_of::<one::Store>().unwrap(),
            "enum Store\nenum Store{Put{key:str,value:str};Get(str);}"
        );
        assert_eq!(
            TypeTag::shape_of::<Vec<(u8, Option<String>)>>().unwrap(),
            "seq(tuple(u8,option(str)))"
        );
        assert_eq!(
            TypeTag::shape_of::<std::collections::HashMap<String, u64>>().unwrap(),
            "map(str,u64)"
        );
    }

    #[test]
    fn recursive_types_are_traced() {
        let tree = TypeTag::shape_of::<Tree>().unwrap();
        assert!(
            tree.contains("Leaf(u32);Node(enum Tree,enum Tree);"),
            "{tree}"
        );
        let list = TypeTag::shape_of::<List>().unwrap();
        assert!(list.contains("Cons(u32,enum List);Nil;"), "{list}");
        let dir = TypeTag::shape_of::<Dir>().unwrap();
        assert!(
            dir.contains("struct Dir(name:str,children:seq(struct Dir))"),
            "{dir}"
        );
    }

    #[test]
    fn pids_and_reply_handles_are_their_wire_form() {
        let msg = TypeTag::shape_of::<Msg>().unwrap();
        assert!(msg.contains("Ping(struct PidRepr)"), "{msg}");
        assert!(msg.contains("Ask(str,struct ReplyRepr)"), "{msg}");
    }

    #[test]
    fn untraceable_types_fall_back_to_their_name() {
        assert_eq!(TypeTag::shape_of::<Untagged>(), None);
        assert_eq!(
            TypeTag::of::<Untagged>(),
            TypeTag::of_name(std::any::type_name::<Untagged>())
        );
    }

    /// Golden values: a change here changes the wire (and needs a new protocol version).
    #[test]
    fn golden_tags() {
        for (tag, golden) in [
            (TypeTag::of::<String>(), 0x826e_8319_5d0d_60f0),
            (TypeTag::of::<u64>(), 0x4d35_d319_3e8d_66f2),
            (TypeTag::of::<Vec<u8>>(), 0x8f67_9468_196f_5040),
            (TypeTag::of::<[u8; 32]>(), 0x1a36_44cc_1e33_0f54),
            (
                TypeTag::of::<(String, crate::ReplyTo<String>)>(),
                0x45d9_e257_610f_c81b,
            ),
            (TypeTag::of::<one::Store>(), 0xbe93_813d_d9ba_b1c8),
        ] {
            assert_eq!(tag.0, golden, "{tag:?}");
        }
    }

    #[test]
    fn name_tags_agree_across_paths() {
        assert_eq!(TypeTag::of_name("x::Ping"), TypeTag::of_name("y::z::Ping"));
        assert_ne!(TypeTag::of::<String>(), TypeTag::of::<u64>());
    }
}
