//! Small value types of the configuration: durations (`30s`), byte sizes (`64KiB`), listen
//! addresses and upstream URLs. Each parses from the string users write, prints back the same
//! way, and describes itself in the JSON schema.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Implements serde for a type through its `FromStr`/`Display`, and a string JSON schema.
macro_rules! string_type {
    ($ty:ty, $name:literal, $desc:literal, $pattern:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                let pattern: Option<&str> = $pattern;
                match pattern {
                    Some(p) => json_schema!({"type": "string", "description": $desc, "pattern": p}),
                    None => json_schema!({"type": "string", "description": $desc}),
                }
            }
        }
    };
}

// === Duration ===

/// A duration written as a number and a unit: `250ms`, `30s`, `5m`, `1h`, or a combination
/// such as `1m30s`. A bare number is rejected, so `30` never silently means milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid duration {s:?} (write it like 500ms, 30s, 5m or 1h)");
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let mut total = std::time::Duration::ZERO;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let part = match &rest[..unit_len] {
                "ms" => std::time::Duration::from_millis(n),
                "s" => std::time::Duration::from_secs(n),
                "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
                "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
                _ => return Err(bad()),
            };
            total = total.saturating_add(part);
            rest = &rest[unit_len..];
        }
        Ok(Self(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            f.write_str("0s")
        } else if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "invalid duration {other} (write it as a string with a unit, like \"30s\")"
            ))),
        }
    }
}

string_type!(
    Duration,
    "Duration",
    "A duration with a unit: 500ms, 30s, 5m, 1h, 1m30s",
    Some("^([0-9]+(ms|s|m|h))+$")
);

// === Rate ===

/// A rate: a count per period, `100/s`, `6000/m`, `10/min`, `1000/h`, `50000/d`, or per any
/// duration, `5/10s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u32,
    pub per: std::time::Duration,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid rate {s:?} (write it like 100/s, 6000/m, 10/h or 5/10s)");
        let (count, per) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = per.trim();
        let per = match per {
            "s" | "sec" | "second" => std::time::Duration::from_secs(1),
            "m" | "min" | "minute" => std::time::Duration::from_secs(60),
            "h" | "hour" => std::time::Duration::from_secs(3600),
            "d" | "day" => std::time::Duration::from_secs(86_400),
            other => other.parse::<Duration>().map_err(|_| bad())?.get(),
        };
        if count == 0 {
            return Err(format!("invalid rate {s:?}: the count must be at least 1"));
        }
        if per.is_zero() {
            return Err(format!(
                "invalid rate {s:?}: the period must be longer than 0s"
            ));
        }
        Ok(Self { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.as_millis() {
            1000 => write!(f, "{}/s", self.count),
            60_000 => write!(f, "{}/m", self.count),
            3_600_000 => write!(f, "{}/h", self.count),
            86_400_000 => write!(f, "{}/d", self.count),
            _ => write!(f, "{}/{}", self.count, Duration(self.per)),
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

string_type!(
    Rate,
    "Rate",
    "A count per period: 100/s, 6000/m, 1000/h, 50000/d, or per a duration, 5/10s",
    Some("^[0-9]+/([0-9]+(ms|s|m|h))+$|^[0-9]+/(s|sec|second|m|min|minute|h|hour|d|day)$")
);

// === ByteSize ===

/// A size in bytes: a plain integer, or a string with a unit (`64KiB`, `1MiB`, `10MB`, `512B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid size {s:?} (write it like 8192, 64KiB or 10MB)");
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let n: u64 = t[..split].parse().map_err(|_| bad())?;
        let mult: u64 = match t[split..].trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(Self).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 && n.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", n >> 30)
        } else if n != 0 && n.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", n >> 20)
        } else if n != 0 && n.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}B")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            serde_json::Value::Number(n) => n.as_u64().map(Self).ok_or_else(|| {
                serde::de::Error::custom(format!("invalid size {n} (a whole number of bytes)"))
            }),
            other => Err(serde::de::Error::custom(format!("invalid size {other}"))),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("ByteSize")
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size in bytes: an integer, or a string with a unit (B, KB, KiB, MB, MiB, GB, GiB)",
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+ ?(B|KB|kB|KiB|MB|MiB|GB|GiB)?$"}
            ]
        })
    }
}

// === ListenAddr ===

/// A socket address to listen on: `0.0.0.0:15006`, `[::]:15006`, `127.0.0.1:15000`, or
/// `:15006` for all IPv4 interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenAddr(pub SocketAddr);

impl ListenAddr {
    pub const fn new(ip: [u8; 4], port: u16) -> Self {
        Self(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
            port,
        ))
    }
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some(port) = t.strip_prefix(':') {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("invalid listen address {s:?}: bad port"))?;
            return Ok(Self::new([0, 0, 0, 0], port));
        }
        if t.starts_with("localhost:") {
            return Err(format!(
                "invalid listen address {s:?}: use an IP address such as 127.0.0.1:PORT"
            ));
        }
        t.parse::<SocketAddr>().map(Self).map_err(|_| {
            format!("invalid listen address {s:?} (expected IP:PORT, e.g. 0.0.0.0:15006)")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

string_type!(
    ListenAddr,
    "ListenAddr",
    "IP:PORT to listen on, e.g. 0.0.0.0:15006 or [::]:15006; :PORT means 0.0.0.0:PORT",
    None
);

// === UpstreamUrl ===

/// Where an upstream (or the app) is reached: `http://host:port`. The path must be empty;
/// the request's own path and query are kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Credentials from `http://user:pass@host`, if any (kept out of logs and `/config`).
    pub userinfo: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    /// TLS to the endpoint (rustls), its settings in the upstream's `tls`.
    Https,
}

impl UpstreamUrl {
    /// `host:port`, the authority requests to this upstream use.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for UpstreamUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid URL {s:?} ({why})");
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad("expected http://host:port"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if !(path.is_empty() || path == "/") {
            return Err(bad("a path is not allowed; the request's path is kept"));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_owned()), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("junk after the IPv6 address")),
            };
            (h, port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let valid_host = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if !valid_host {
            return Err(bad("missing or invalid host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad("invalid port"))?,
            None if scheme == Scheme::Https => 443,
            None => 80,
        };
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            userinfo,
        })
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.scheme {
            Scheme::Http => "http://",
            Scheme::Https => "https://",
        })?;
        if let Some(u) = &self.userinfo {
            write!(f, "{u}@")?;
        }
        f.write_str(&self.authority())
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

string_type!(
    UpstreamUrl,
    "UpstreamUrl",
    "http://host:port of an app or upstream endpoint (no path)",
    Some("^[hH][tT][tT][pP]://")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_units_and_durations_and_print_back() {
        for (text, count, per_ms, shown) in [
            ("100/s", 100, 1000, "100/s"),
            ("6000/min", 6000, 60_000, "6000/m"),
            ("10/hour", 10, 3_600_000, "10/h"),
            ("1/d", 1, 86_400_000, "1/d"),
            ("5/10s", 5, 10_000, "5/10s"),
            (" 3 / 500ms ", 3, 500, "3/500ms"),
        ] {
            let r: Rate = text.parse().unwrap();
            assert_eq!((r.count, r.per.as_millis()), (count, per_ms), "{text}");
            assert_eq!(r.to_string(), shown);
            assert_eq!(shown.parse::<Rate>().unwrap(), r);
        }
        for bad in ["", "100", "/s", "x/s", "0/s", "1/0s", "1/fortnight", "-1/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_round_trip() {
        for (s, ms) in [
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
        ] {
            let d: Duration = s.parse().unwrap();
            assert_eq!(d.0.as_millis(), ms);
            assert_eq!(d.to_string(), s);
        }
        assert_eq!("1m30s".parse::<Duration>().unwrap().0.as_secs(), 90);
        for bad in ["", "30", "s", "3x", "-1s", "1.5s"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("64KiB".parse::<ByteSize>().unwrap().0, 65536);
        assert_eq!("10MB".parse::<ByteSize>().unwrap().0, 10_000_000);
        assert_eq!("512".parse::<ByteSize>().unwrap().0, 512);
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
        assert!("12 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            ":15006".parse::<ListenAddr>().unwrap().to_string(),
            "0.0.0.0:15006"
        );
        assert_eq!(
            "[::1]:80".parse::<ListenAddr>().unwrap().to_string(),
            "[::1]:80"
        );
        assert!("localhost:80".parse::<ListenAddr>().is_err());
        assert!("1.2.3.4".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn upstream_urls() {
        let u: UpstreamUrl = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8080));
        let u: UpstreamUrl = "http://payments/".parse().unwrap();
        assert_eq!(u.authority(), "payments:80");
        let u: UpstreamUrl = "http://[::1]:9000".parse().unwrap();
        assert_eq!(u.authority(), "[::1]:9000");
        let u: UpstreamUrl = "http://u:p@h:1".parse().unwrap();
        assert_eq!(u.userinfo.as_deref(), Some("u:p"));
        assert_eq!(
            "htp:/x".parse::<UpstreamUrl>().unwrap_err(),
            "invalid URL \"htp:/x\" (expected http://host:port)"
        );
        assert!("http://h:1/api".parse::<UpstreamUrl>().is_err());
        assert!("http://:80".parse::<UpstreamUrl>().is_err());
        assert!("ftp://h".parse::<UpstreamUrl>().is_err());
        assert!("http://h:99999".parse::<UpstreamUrl>().is_err());
    }
}
