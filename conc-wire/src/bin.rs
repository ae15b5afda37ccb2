//! The one module that calls bincode. Everything in conc that turns values into bytes or back
//! goes through these functions, so the configuration is fixed in one place.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest number of bytes one decode may claim, whatever a peer's lengths say. Frames are
/// limited separately (and more tightly) by the codec's maximum frame size.
pub const DECODE_LIMIT: usize = 256 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Why bincode failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A value could not be encoded.
    #[error("encode: {0}")]
    Encode(String),
    /// Bytes could not be decoded.
    #[error("decode: {0}")]
    Decode(String),
    /// Bytes were left over after a decoded value.
    #[error("decode: {0} trailing bytes")]
    Trailing(usize),
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Encodes `value` into a new vector.
pub fn encode_to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes a value from the start of `bytes`; returns it and the number of bytes used.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    bincode::serde::decode_from_slice::<T, _>(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))
}

/// Decodes a value that must fill `bytes` exactly.
pub fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Appends a message body: [`encode_into`] with the error as text, in the shape of
/// `conc_core::EncodeBody`, so that a node can register it as a message type's codec.
pub fn encode_body<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    encode_into(value, out).map_err(|e| e.to_string())
}

/// Decodes a message body of a known type with the same bounds as [`with_deserializer`] and
/// the same result, without type erasure (one call per message instead of one per serde
/// primitive); in the shape of `conc_core::DecodeBody`.
pub fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let body = limits::Body::new(bytes);
    T::deserialize(&body).map_err(|e| e.to_string())
}

/// Runs `f` with a type-erased deserializer over `bytes` (a message body), so that code that
/// knows the message type (conc-core) decodes it without knowing the format.
///
/// The decode is bounded whatever the message type (see [`limits`]): values nest at most
/// [`limits::MAX_DEPTH`] levels deep (a recursive type cannot overflow the stack), and the
/// sequences and maps in one body hold at most one element per body byte plus
/// [`limits::EXTRA_ELEMENTS`] (a length prefix claiming 2^60 zero-sized elements cannot keep a
/// thread busy).
pub fn with_deserializer<R>(
    bytes: &[u8],
    f: impl FnOnce(&mut dyn erased_serde::Deserializer<'_>) -> R,
) -> R {
    let body = limits::Body::new(bytes);
    let mut erased = <dyn erased_serde::Deserializer>::erase(&body);
    f(&mut erased)
}

pub mod limits {
    //! Bounds on decoding a message body whose type a peer does not choose but whose bytes it
    //! does: the serde `Deserializer` of message bodies ([`with_deserializer`](super::with_deserializer),
    //! [`decode_body`](super::decode_body)), which walks bincode's format, counts nesting depth
    //! and sequence elements, and leaves every leaf value to bincode.
    //!
    //! bincode checks that strings and byte arrays are really there before it allocates them,
    //! and serde never preallocates more than 1 MiB for a sequence, but two things escape:
    //! a recursive message type (`enum Tree { Leaf, Node(Box<Tree>, Box<Tree>) }`) nests one
    //! level per input byte, which overflows a thread's stack long before the frame limit; and a
    //! sequence of zero-sized values (`Vec<()>`, a `Vec` of a unit struct) takes no bytes per
    //! element, so a length prefix of 2^60 makes serde loop for years.
    //!
    //! It also keeps error messages short. An error deep in a value crosses the type-erasure
    //! boundary (erased-serde) a few times per level of nesting, and each crossing wraps the
    //! message in bincode's `OtherString("…")` with its quotes and backslashes escaped again:
    //! the message grows about eightfold per level, so a ten-byte body of a type nested ten
    //! levels deep made a gigabyte-long error. Each level unwraps and bounds the message
    //! ([`MAX_ERROR`]).

    use std::cell::Cell;

    use bincode::error::DecodeError;
    use serde::de::{
        self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
        VariantAccess, Visitor,
    };

    /// How deep values in one message may nest (structs, enums, options, sequences, maps: each
    /// level counts one).
    pub const MAX_DEPTH: usize = 128;

    /// Sequence and map elements one message may hold beyond one per byte of its body (every
    /// element that is not zero-sized takes at least a byte).
    pub const EXTRA_ELEMENTS: usize = 1 << 16;

    /// The longest error message passed up from one level of a decode, in bytes.
    pub const MAX_ERROR: usize = 512;

    /// Unwraps bincode's `OtherString("…")` layers (undoing their escaping) and cuts the
    /// message to [`MAX_ERROR`] bytes; an error that needs neither is returned as it is.
    fn tidy<E: de::Error>(e: E) -> E {
        const WRAP: &str = "OtherString(\"";
        let msg = e.to_string();
        if msg.len() <= MAX_ERROR && !msg.starts_with(WRAP) {
            return e;
        }
        let mut msg = msg;
        while let Some(inner) = msg
            .strip_prefix(WRAP)
            .and_then(|rest| rest.strip_suffix("\")"))
        {
            let mut plain = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        plain.push(next);
                    }
                } else {
                    plain.push(c);
                }
            }
            msg = plain;
        }
        if msg.len() > MAX_ERROR {
            let mut cut = MAX_ERROR;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
            msg.push('…');
        }
        E::custom(msg)
    }

    /// One body being decoded: the bytes not yet read and what is left of the decode's
    /// allowance. `&Body` is the serde `Deserializer` of the body, and of every value nested in
    /// it (all share the cursor).
    ///
    /// It walks bincode's format itself (a sequence or map is a length then its elements, a
    /// struct or tuple its fields in order, an enum a variant index then its content, an option
    /// a tag byte then its value) and hands every leaf (integers, floats, `char`, strings, byte
    /// strings, lengths, variant indices, option tags) to bincode's own `Decode` for that type,
    /// over the bytes left. Walking the structure here, instead of wrapping bincode's serde
    /// deserializer and everything it hands out, costs a `u8` element of a `Vec<u8>` one byte
    /// read instead of five wrapper layers and a nesting check (the decode of a 1 MiB `Vec<u8>`
    /// went from about 7 ms to about 1 ms); a sequence's elements are charged to the allowance
    /// all at once, from its length, before the first is read.
    pub(crate) struct Body<'de> {
        rest: Cell<&'de [u8]>,
        depth: Cell<usize>,
        elements: Cell<usize>,
    }

    impl<'de> Body<'de> {
        /// The decoder of a body of `bytes`, with the allowance of its length.
        pub(crate) fn new(bytes: &'de [u8]) -> Body<'de> {
            Body {
                rest: Cell::new(bytes),
                depth: Cell::new(0),
                elements: Cell::new(bytes.len().saturating_add(EXTRA_ELEMENTS)),
            }
        }

        /// Decodes one leaf value with bincode's own decoder for its type, and moves past it.
        fn leaf<T: bincode::Decode<()>>(&self) -> Result<T, DecodeError> {
            let (value, used) =
                bincode::decode_from_slice::<T, _>(self.rest.get(), super::config())?;
            self.advance(used);
            Ok(value)
        }

        /// [`Body::leaf`] for values borrowed from the body (`&str`, `&[u8]`).
        fn borrowed_leaf<T: bincode::BorrowDecode<'de, ()>>(&self) -> Result<T, DecodeError> {
            let (value, used) =
                bincode::borrow_decode_from_slice::<T, _>(self.rest.get(), super::config())?;
            self.advance(used);
            Ok(value)
        }

        fn advance(&self, used: usize) {
            let rest = self.rest.get();
            self.rest.set(rest.get(used..).unwrap_or_default());
        }

        /// One byte: a `u8` is stored as itself.
        #[inline]
        fn byte(&self) -> Result<u8, DecodeError> {
            match self.rest.get().split_first() {
                Some((&b, rest)) => {
                    self.rest.set(rest);
                    Ok(b)
                }
                None => Err(DecodeError::UnexpectedEnd { additional: 1 }),
            }
        }

        fn enter(&self) -> Result<Level<'_, 'de>, DecodeError> {
            let depth = self.depth.get() + 1;
            if depth > MAX_DEPTH {
                return Err(de::Error::custom(format_args!(
                    "the message nests deeper than {MAX_DEPTH} levels"
                )));
            }
            self.depth.set(depth);
            Ok(Level(self))
        }

        /// Charges `n` sequence or map elements to the allowance.
        fn charge(&self, n: usize) -> Result<(), DecodeError> {
            match self.elements.get().checked_sub(n) {
                Some(left) => {
                    self.elements.set(left);
                    Ok(())
                }
                None => Err(de::Error::custom(
                    "the message has more sequence elements than its length allows",
                )),
            }
        }

        /// A sequence (or tuple, or struct) of `len` elements.
        fn elements<V: Visitor<'de>>(
            &self,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, DecodeError> {
            let _level = self.enter()?;
            self.charge(len)?;
            visitor
                .visit_seq(Elements {
                    body: self,
                    left: len,
                })
                .map_err(tidy)
        }
    }

    /// One level of nesting, left when dropped.
    struct Level<'b, 'de>(&'b Body<'de>);

    impl Drop for Level<'_, '_> {
        fn drop(&mut self) {
            self.0.depth.set(self.0.depth.get().saturating_sub(1));
        }
    }

    /// The elements of a sequence, tuple or struct (already charged).
    struct Elements<'b, 'de> {
        body: &'b Body<'de>,
        left: usize,
    }

    impl<'de> SeqAccess<'de> for Elements<'_, 'de> {
        type Error = DecodeError;

        #[inline]
        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, DecodeError> {
            if self.left == 0 {
                return Ok(None);
            }
            self.left -= 1;
            seed.deserialize(self.body).map(Some)
        }

        fn size_hint(&self) -> Option<usize> {
            Some(self.left)
        }
    }

    /// The entries of a map (already charged, one element per entry).
    struct Entries<'b, 'de> {
        body: &'b Body<'de>,
        left: usize,
    }

    impl<'de> MapAccess<'de> for Entries<'_, 'de> {
        type Error = DecodeError;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, DecodeError> {
            if self.left == 0 {
                return Ok(None);
            }
            self.left -= 1;
            seed.deserialize(self.body).map(Some)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, DecodeError> {
            seed.deserialize(self.body)
        }

        fn size_hint(&self) -> Option<usize> {
            Some(self.left)
        }
    }

    macro_rules! leaves {
        ($($method:ident => $visit:ident($ty:ty);)*) => {
            $(
                fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
                    visitor.$visit(self.leaf::<$ty>()?)
                }
            )*
        };
    }

    impl<'de> Deserializer<'de> for &Body<'de> {
        type Error = DecodeError;

        leaves! {
            deserialize_bool => visit_bool(bool);
            deserialize_i8 => visit_i8(i8);
            deserialize_i16 => visit_i16(i16);
            deserialize_i32 => visit_i32(i32);
            deserialize_i64 => visit_i64(i64);
            deserialize_i128 => visit_i128(i128);
            deserialize_u16 => visit_u16(u16);
            deserialize_u32 => visit_u32(u32);
            deserialize_u64 => visit_u64(u64);
            deserialize_u128 => visit_u128(u128);
            deserialize_f32 => visit_f32(f32);
            deserialize_f64 => visit_f64(f64);
            deserialize_char => visit_char(char);
            deserialize_string => visit_string(String);
            deserialize_byte_buf => visit_byte_buf(Vec<u8>);
        }

        #[inline]
        fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            visitor.visit_u8(self.byte()?)
        }

        fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            visitor.visit_borrowed_str(self.borrowed_leaf::<&'de str>()?)
        }

        fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            visitor.visit_borrowed_bytes(self.borrowed_leaf::<&'de [u8]>()?)
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            // bincode's option tag (0 or 1; anything else is its error), with nothing after it.
            match self.leaf::<Option<()>>()? {
                Some(()) => {
                    let _level = self.enter()?;
                    visitor.visit_some(self).map_err(tidy)
                }
                None => visitor.visit_none(),
            }
        }

        fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            visitor.visit_unit()
        }

        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, DecodeError> {
            visitor.visit_unit()
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, DecodeError> {
            let _level = self.enter()?;
            visitor.visit_newtype_struct(self).map_err(tidy)
        }

        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            let len = self.leaf::<usize>()?;
            self.elements(len, visitor)
        }

        fn deserialize_tuple<V: Visitor<'de>>(
            self,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, DecodeError> {
            self.elements(len, visitor)
        }

        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, DecodeError> {
            self.elements(len, visitor)
        }

        fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            let len = self.leaf::<usize>()?;
            let _level = self.enter()?;
            self.charge(len)?;
            visitor
                .visit_map(Entries {
                    body: self,
                    left: len,
                })
                .map_err(tidy)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, DecodeError> {
            self.elements(fields.len(), visitor)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, DecodeError> {
            let _level = self.enter()?;
            visitor.visit_enum(self).map_err(tidy)
        }

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DecodeError> {
            Err(bincode::serde::DecodeError::AnyNotSupported.into())
        }

        fn deserialize_identifier<V: Visitor<'de>>(
            self,
            _visitor: V,
        ) -> Result<V::Value, DecodeError> {
            Err(bincode::serde::DecodeError::IdentifierNotSupported.into())
        }

        fn deserialize_ignored_any<V: Visitor<'de>>(
            self,
            _visitor: V,
        ) -> Result<V::Value, DecodeError> {
            Err(bincode::serde::DecodeError::IgnoredAnyNotSupported.into())
        }

        fn is_human_readable(&self) -> bool {
            false
        }
    }

    impl<'de> EnumAccess<'de> for &Body<'de> {
        type Error = DecodeError;
        type Variant = Self;

        fn variant_seed<V: DeserializeSeed<'de>>(
            self,
            seed: V,
        ) -> Result<(V::Value, Self), DecodeError> {
            let index = self.leaf::<u32>()?;
            let value = seed.deserialize(index.into_deserializer())?;
            Ok((value, self))
        }
    }

    impl<'de> VariantAccess<'de> for &Body<'de> {
        type Error = DecodeError;

        fn unit_variant(self) -> Result<(), DecodeError> {
            Ok(())
        }

        fn newtype_variant_seed<T: DeserializeSeed<'de>>(
            self,
            seed: T,
        ) -> Result<T::Value, DecodeError> {
            seed.deserialize(self)
        }

        fn tuple_variant<V: Visitor<'de>>(
            self,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, DecodeError> {
            self.elements(len, visitor)
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, DecodeError> {
            self.elements(fields.len(), visitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trailing() {
        let v = encode_to_vec(&("abc".to_string(), 7u64)).unwrap();
        let back: (String, u64) = decode_exact(&v).unwrap();
        assert_eq!(back, ("abc".to_string(), 7));
        let mut longer = v.clone();
        longer.push(0);
        assert_eq!(
            decode_exact::<(String, u64)>(&longer),
            Err(CodecError::Trailing(1))
        );
    }

    /// The body decoder walks bincode's format itself: it must read exactly what bincode's own
    /// serde decoder reads, value for value, and refuse what it refuses.
    #[test]
    fn the_body_decoder_agrees_with_bincode() {
        use serde::{Deserialize, Serialize};
        use std::collections::BTreeMap;

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Unit;
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Newtype(u16);
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        enum Kind {
            A,
            B(i64),
            C(u8, String),
            D { x: f32, y: Option<char> },
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct All {
            b: bool,
            i: (i8, i16, i32, i64, i128),
            u: (u8, u16, u32, u64, u128),
            f: f64,
            c: char,
            s: String,
            bytes: Vec<u8>,
            arr: [u8; 5],
            opt: Option<Box<All>>,
            unit: (),
            marker: Unit,
            newtype: Newtype,
            kinds: Vec<Kind>,
            map: BTreeMap<String, Vec<u32>>,
        }
        fn sample(depth: u8) -> All {
            All {
                b: depth.is_multiple_of(2),
                i: (-1, -300, -70_000, i64::MIN, i128::MAX),
                u: (depth, 300, 70_000, u64::MAX, u128::MAX - 1),
                f: -0.5,
                c: 'é',
                s: "ünïcode".repeat(depth as usize),
                bytes: (0..=255).collect(),
                arr: [1, 2, 3, 4, depth],
                opt: (depth > 0).then(|| Box::new(sample(depth - 1))),
                unit: (),
                marker: Unit,
                newtype: Newtype(65_000),
                kinds: vec![
                    Kind::A,
                    Kind::B(-5),
                    Kind::C(9, "c".into()),
                    Kind::D { x: 1.5, y: None },
                    Kind::D {
                        x: 2.0,
                        y: Some('z'),
                    },
                ],
                map: [("k".to_string(), vec![1, 1 << 20]), (String::new(), vec![])].into(),
            }
        }
        let value = sample(3);
        let bytes = encode_to_vec(&value).unwrap();
        assert_eq!(decode_body::<All>(&bytes).unwrap(), value);
        assert_eq!(decode_exact::<All>(&bytes).unwrap(), value);
        let erased: All = with_deserializer(&bytes, |de| erased_serde::deserialize(de)).unwrap();
        assert_eq!(erased, value);
        // Every truncation and many single-byte changes: both decoders agree on the value or
        // both refuse.
        for cut in 0..bytes.len() {
            let bincode = decode_prefix::<All>(&bytes[..cut]).map(|(v, _)| v).ok();
            assert_eq!(
                decode_body::<All>(&bytes[..cut]).ok(),
                bincode,
                "cut at {cut}"
            );
        }
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut changed = bytes.clone();
                changed[at] ^= flip;
                let bincode = decode_prefix::<All>(&changed).map(|(v, _)| v).ok();
                assert_eq!(
                    decode_body::<All>(&changed).ok(),
                    bincode,
                    "byte {at} ^ {flip:#x}"
                );
            }
        }
    }

    #[test]
    fn huge_claimed_lengths_fail_without_allocating() {
        // A varint length claiming u64::MAX elements.
        let bytes = [0xFDu8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode_exact::<Vec<u64>>(&bytes).is_err());
        assert!(decode_exact::<String>(&bytes).is_err());
    }
}
