//! The byte codecs every part of attache shares: hex and percent-encoding. The ground floor:
//! it imports nothing else of the crate.

pub mod hex;
pub mod percent;
