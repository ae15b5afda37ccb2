//! Message-type tags: a 64-bit fingerprint of a message type's name, used to refuse a frame
//! whose type does not match the process it is addressed to.

use std::fmt;

/// A fingerprint of a message type, carried by every pid and every remote frame.
///
/// The tag is the FNV-1a hash of the type's name with module paths removed
/// (`alloc::vec::Vec<my_app::Ping>` becomes `Vec<Ping>`), so the same type compiled into two
/// different programs (for example two example binaries that share a module) gets the same tag.
/// It is a safety check against mixing up processes, not a schema: two different types with the
/// same short name share a tag.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TypeTag(pub u64);

impl TypeTag {
    /// The tag of `T`.
    pub fn of<T: ?Sized>() -> TypeTag {
        TypeTag::of_name(std::any::type_name::<T>())
    }

    /// The tag of a type given its full name as printed by [`std::any::type_name`].
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

    #[test]
    fn tags_differ_by_type_and_agree_across_paths() {
        assert_eq!(TypeTag::of_name("x::Ping"), TypeTag::of_name("y::z::Ping"));
        assert_ne!(TypeTag::of::<String>(), TypeTag::of::<u64>());
        assert_eq!(TypeTag::of::<String>(), TypeTag::of_name("String"));
    }
}
