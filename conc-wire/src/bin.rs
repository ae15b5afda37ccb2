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

/// Runs `f` with a type-erased deserializer over `bytes` (a message body), so that code that
/// knows the message type (conc-core) decodes it without knowing the format.
pub fn with_deserializer<R>(
    bytes: &[u8],
    f: impl FnOnce(&mut dyn erased_serde::Deserializer<'_>) -> R,
) -> R {
    let mut decoder = bincode::serde::BorrowedSerdeDecoder::from_slice(bytes, config(), ());
    let mut erased = <dyn erased_serde::Deserializer>::erase(decoder.as_deserializer());
    f(&mut erased)
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
