//! `traceparent` (W3C Trace Context Level 2), `specs/trace-context.md` §2.1.
//!
//! A value is valid only if exactly one `traceparent` line is present and, once trimmed of
//! SP/HTAB, it reads `{version}-{trace-id}-{parent-id}-{flags}` in lowercase hex: version not
//! `ff`; version `00` exactly 55 characters; a higher version at least 55, with `-` or the end
//! after the flags (anything further is ignored); ids not all zero. Of the flags only sampled
//! (`0x01`) and random (`0x02`) are kept.

use std::fmt;

use http::{HeaderMap, HeaderValue};

use super::trim_ows;
use crate::codec::hex::{
    lower_byte as hex_byte, lower_u64 as hex_u64, lower_u128 as hex_u128, put as put_hex,
};

pub const TRACEPARENT: &str = "traceparent";

/// A 16-byte trace id, never zero once parsed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub u128);

/// An 8-byte span id, never zero once parsed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub u64);

/// The two trace flags attache keeps.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceFlags(u8);

impl TraceFlags {
    pub const SAMPLED: u8 = 0x01;
    pub const RANDOM: u8 = 0x02;

    /// Keeps only the sampled and random bits; other bits are never forwarded.
    pub const fn new(bits: u8) -> Self {
        Self(bits & (Self::SAMPLED | Self::RANDOM))
    }
    pub const fn bits(self) -> u8 {
        self.0
    }
    pub const fn sampled(self) -> bool {
        self.0 & Self::SAMPLED != 0
    }
    pub const fn random(self) -> bool {
        self.0 & Self::RANDOM != 0
    }
    pub const fn with_sampled(self, sampled: bool) -> Self {
        if sampled {
            Self(self.0 | Self::SAMPLED)
        } else {
            Self(self.0 & !Self::SAMPLED)
        }
    }
    pub const fn with_random(self, random: bool) -> Self {
        if random {
            Self(self.0 | Self::RANDOM)
        } else {
            Self(self.0 & !Self::RANDOM)
        }
    }
}

/// A valid incoming `traceparent`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub flags: TraceFlags,
}

/// Why a `traceparent` was ignored (counted as `invalid`, never a 4xx for the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// More than one `traceparent` line, even identical ones.
    Repeated,
    Version,
    Length,
    TraceId,
    ParentId,
    Flags,
}

/// Reads the `traceparent` of a request: `None` when absent, `Some(Err)` when present but invalid.
pub fn extract(headers: &HeaderMap) -> Option<Result<TraceParent, Invalid>> {
    let mut lines = headers.get_all(TRACEPARENT).iter();
    let first = lines.next()?;
    if lines.next().is_some() {
        return Some(Err(Invalid::Repeated));
    }
    Some(parse(first.as_bytes()))
}

/// Parses one `traceparent` value.
pub fn parse(value: &[u8]) -> Result<TraceParent, Invalid> {
    let v = trim_ows(value);
    if v.len() < 3 || v[2] != b'-' {
        return Err(Invalid::Version);
    }
    let version = hex_byte(&v[..2]).ok_or(Invalid::Version)?;
    if version == 0xff {
        return Err(Invalid::Version);
    }
    match (version, v.len()) {
        (0, 55) => {}
        (0, _) => return Err(Invalid::Length),
        (_, n) if n < 55 => return Err(Invalid::Length),
        // A later version may add fields, separated by `-`; they are ignored.
        (_, 55) => {}
        (_, _) if v[55] == b'-' => {}
        _ => return Err(Invalid::Length),
    }
    let trace_id = hex_u128(&v[3..35])
        .filter(|t| *t != 0)
        .ok_or(Invalid::TraceId)?;
    if v[35] != b'-' {
        return Err(Invalid::TraceId);
    }
    let parent_id = hex_u64(&v[36..52])
        .filter(|s| *s != 0)
        .ok_or(Invalid::ParentId)?;
    if v[52] != b'-' {
        return Err(Invalid::ParentId);
    }
    let flags = hex_byte(&v[53..55]).ok_or(Invalid::Flags)?;
    Ok(TraceParent {
        trace_id: TraceId(trace_id),
        parent_id: SpanId(parent_id),
        flags: TraceFlags::new(flags),
    })
}

/// `00-{trace-id}-{span-id}-{flags}`: one allocation (the header value's own bytes).
pub fn write(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> HeaderValue {
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    put_hex(&mut buf[3..35], trace_id.0.to_be_bytes().as_slice());
    buf[35] = b'-';
    put_hex(&mut buf[36..52], span_id.0.to_be_bytes().as_slice());
    buf[52] = b'-';
    put_hex(&mut buf[53..55], &[flags.bits()]);
    // Only ASCII hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for TraceFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

#[cfg(test)]
mod tests;
