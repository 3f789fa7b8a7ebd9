//! The byte codecs every part of attache shares: hex, percent-encoding, hosts. The ground floor:
//! it imports nothing else of the crate.

pub mod hex;
pub mod host;
pub mod percent;
