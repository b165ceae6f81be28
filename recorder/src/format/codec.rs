//! The one place that knows the event codec (bincode 2.0.1 over serde).
//!
//! bincode is unmaintained (RUSTSEC-2025-0141) and pinned; moving to another
//! codec (postcard, say) means changing this file and bumping
//! [`super::FORMAT_VERSION`], nothing else.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::FRAME_RAW_BYTES_MAX;

/// Varint little-endian encoding, and a decode limit so that no length
/// prefix inside a frame can make the decoder allocate more than a frame.
type Config = Configuration<LittleEndian, Varint, Limit<FRAME_RAW_BYTES_MAX>>;

const CONFIG: Config = config::standard()
    .with_little_endian()
    .with_variable_int_encoding()
    .with_limit::<FRAME_RAW_BYTES_MAX>();

/// Append the encoding of `value` to `out`.
pub(crate) fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    bincode::serde::encode_into_std_write(value, out, CONFIG)
        .map(drop)
        .map_err(|err| err.to_string())
}

/// Decode one value from the front of `bytes`; returns it and the bytes used.
pub(crate) fn decode_from<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), String> {
    bincode::serde::decode_from_slice(bytes, CONFIG).map_err(|err| err.to_string())
}
