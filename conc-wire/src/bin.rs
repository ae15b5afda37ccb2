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
    let mut decoder = bincode::serde::BorrowedSerdeDecoder::from_slice(bytes, config(), ());
    let budget = limits::Budget::new(bytes.len());
    let limited = limits::Limited::new(decoder.as_deserializer(), &budget);
    T::deserialize(limited).map_err(|e| e.to_string())
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
    let mut decoder = bincode::serde::BorrowedSerdeDecoder::from_slice(bytes, config(), ());
    let budget = limits::Budget::new(bytes.len());
    let limited = limits::Limited::new(decoder.as_deserializer(), &budget);
    let mut erased = <dyn erased_serde::Deserializer>::erase(limited);
    f(&mut erased)
}

pub mod limits {
    //! Bounds on decoding a message body whose type a peer does not choose but whose bytes it
    //! does: a serde `Deserializer` wrapper that counts nesting depth and sequence elements.
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
    use std::fmt;

    use serde::de::{
        self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess,
        Visitor,
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

    /// What is left of one decode's allowance.
    pub(crate) struct Budget {
        depth: Cell<usize>,
        elements: Cell<usize>,
    }

    impl Budget {
        /// The allowance of a body of `len` bytes.
        pub(crate) fn new(len: usize) -> Budget {
            Budget {
                depth: Cell::new(0),
                elements: Cell::new(len.saturating_add(EXTRA_ELEMENTS)),
            }
        }

        fn enter<E: de::Error>(&self) -> Result<Level<'_>, E> {
            let depth = self.depth.get() + 1;
            if depth > MAX_DEPTH {
                return Err(E::custom(format_args!(
                    "the message nests deeper than {MAX_DEPTH} levels"
                )));
            }
            self.depth.set(depth);
            Ok(Level(self))
        }

        fn element<E: de::Error>(&self) -> Result<(), E> {
            let left = self.elements.get();
            if left == 0 {
                return Err(E::custom(
                    "the message has more sequence elements than its length allows",
                ));
            }
            self.elements.set(left - 1);
            Ok(())
        }
    }

    /// One level of nesting, left when dropped.
    struct Level<'b>(&'b Budget);

    impl Drop for Level<'_> {
        fn drop(&mut self) {
            self.0.depth.set(self.0.depth.get().saturating_sub(1));
        }
    }

    /// Wraps a deserializer, and everything it hands out (visitors, seeds, sequence, map and
    /// enum access), so that every nested value is counted against one [`Budget`].
    pub(crate) struct Limited<'b, T> {
        inner: T,
        budget: &'b Budget,
    }

    impl<'b, T> Limited<'b, T> {
        /// Wraps `inner`.
        pub(crate) fn new(inner: T, budget: &'b Budget) -> Self {
            Limited { inner, budget }
        }

        fn wrap<U>(&self, inner: U) -> Limited<'b, U> {
            Limited {
                inner,
                budget: self.budget,
            }
        }
    }

    macro_rules! forward_deserialize {
        ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
            $(
                fn $method<V: Visitor<'de>>(
                    self,
                    $($arg: $ty,)*
                    visitor: V,
                ) -> Result<V::Value, D::Error> {
                    let _level = self.budget.enter::<D::Error>()?;
                    let visitor = self.wrap(visitor);
                    self.inner.$method($($arg,)* visitor).map_err(tidy)
                }
            )*
        };
    }

    impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<'_, D> {
        type Error = D::Error;

        forward_deserialize! {
            deserialize_any();
            deserialize_bool();
            deserialize_i8();
            deserialize_i16();
            deserialize_i32();
            deserialize_i64();
            deserialize_i128();
            deserialize_u8();
            deserialize_u16();
            deserialize_u32();
            deserialize_u64();
            deserialize_u128();
            deserialize_f32();
            deserialize_f64();
            deserialize_char();
            deserialize_str();
            deserialize_string();
            deserialize_bytes();
            deserialize_byte_buf();
            deserialize_option();
            deserialize_unit();
            deserialize_unit_struct(name: &'static str);
            deserialize_newtype_struct(name: &'static str);
            deserialize_seq();
            deserialize_tuple(len: usize);
            deserialize_tuple_struct(name: &'static str, len: usize);
            deserialize_map();
            deserialize_struct(name: &'static str, fields: &'static [&'static str]);
            deserialize_enum(name: &'static str, variants: &'static [&'static str]);
            deserialize_identifier();
            deserialize_ignored_any();
        }

        fn is_human_readable(&self) -> bool {
            self.inner.is_human_readable()
        }
    }

    macro_rules! forward_visit {
        ($($method:ident($ty:ty);)*) => {
            $(
                fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                    self.inner.$method(v).map_err(tidy)
                }
            )*
        };
    }

    impl<'de, V: Visitor<'de>> Visitor<'de> for Limited<'_, V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.inner.expecting(f)
        }

        forward_visit! {
            visit_bool(bool);
            visit_i8(i8);
            visit_i16(i16);
            visit_i32(i32);
            visit_i64(i64);
            visit_i128(i128);
            visit_u8(u8);
            visit_u16(u16);
            visit_u32(u32);
            visit_u64(u64);
            visit_u128(u128);
            visit_f32(f32);
            visit_f64(f64);
            visit_char(char);
            visit_str(&str);
            visit_borrowed_str(&'de str);
            visit_string(String);
            visit_bytes(&[u8]);
            visit_borrowed_bytes(&'de [u8]);
            visit_byte_buf(Vec<u8>);
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            self.inner.visit_none().map_err(tidy)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            self.inner.visit_unit().map_err(tidy)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            let d = self.wrap(d);
            self.inner.visit_some(d).map_err(tidy)
        }

        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            let d = self.wrap(d);
            self.inner.visit_newtype_struct(d).map_err(tidy)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            let seq = self.wrap(seq);
            self.inner.visit_seq(seq).map_err(tidy)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let map = self.wrap(map);
            self.inner.visit_map(map).map_err(tidy)
        }

        fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
            let data = self.wrap(data);
            self.inner.visit_enum(data).map_err(tidy)
        }
    }

    impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Limited<'_, S> {
        type Value = S::Value;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
            let d = self.wrap(d);
            self.inner.deserialize(d).map_err(tidy)
        }
    }

    impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Limited<'_, A> {
        type Error = A::Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, A::Error> {
            let seed = self.wrap(seed);
            let element = self.inner.next_element_seed(seed).map_err(tidy)?;
            if element.is_some() {
                self.budget.element::<A::Error>()?;
            }
            Ok(element)
        }

        fn size_hint(&self) -> Option<usize> {
            self.inner.size_hint()
        }
    }

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for Limited<'_, A> {
        type Error = A::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            let seed = self.wrap(seed);
            let key = self.inner.next_key_seed(seed).map_err(tidy)?;
            if key.is_some() {
                self.budget.element::<A::Error>()?;
            }
            Ok(key)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, A::Error> {
            let seed = self.wrap(seed);
            self.inner.next_value_seed(seed).map_err(tidy)
        }

        fn size_hint(&self) -> Option<usize> {
            self.inner.size_hint()
        }
    }

    impl<'b, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Limited<'b, A> {
        type Error = A::Error;
        type Variant = Limited<'b, A::Variant>;

        fn variant_seed<V: DeserializeSeed<'de>>(
            self,
            seed: V,
        ) -> Result<(V::Value, Self::Variant), A::Error> {
            let seed = self.wrap(seed);
            let budget = self.budget;
            let (value, variant) = self.inner.variant_seed(seed).map_err(tidy)?;
            Ok((
                value,
                Limited {
                    inner: variant,
                    budget,
                },
            ))
        }
    }

    impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Limited<'_, A> {
        type Error = A::Error;

        fn unit_variant(self) -> Result<(), A::Error> {
            self.inner.unit_variant().map_err(tidy)
        }

        fn newtype_variant_seed<T: DeserializeSeed<'de>>(
            self,
            seed: T,
        ) -> Result<T::Value, A::Error> {
            let seed = self.wrap(seed);
            self.inner.newtype_variant_seed(seed).map_err(tidy)
        }

        fn tuple_variant<V: Visitor<'de>>(
            self,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, A::Error> {
            let _level = self.budget.enter::<A::Error>()?;
            let visitor = self.wrap(visitor);
            self.inner.tuple_variant(len, visitor).map_err(tidy)
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, A::Error> {
            let _level = self.budget.enter::<A::Error>()?;
            let visitor = self.wrap(visitor);
            self.inner.struct_variant(fields, visitor).map_err(tidy)
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

    #[test]
    fn huge_claimed_lengths_fail_without_allocating() {
        // A varint length claiming u64::MAX elements.
        let bytes = [0xFDu8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode_exact::<Vec<u64>>(&bytes).is_err());
        assert!(decode_exact::<String>(&bytes).is_err());
    }
}
