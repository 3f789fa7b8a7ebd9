//! The sharded ambassador (`balance: shard`): each request goes to the endpoint its key hashes
//! to, by rendezvous (highest-random-weight) hashing: every endpoint scores the key, and the
//! highest score wins. The same key reaches the same endpoint while the set is stable; adding
//! an endpoint to n moves only the keys the new one now wins, about 1/(n+1) of them, and
//! removing one moves only its own keys. Scores are murmur3 of the key seeded by a hash of the
//! endpoint's `host:port`, so every attache with the same endpoints agrees, whatever their
//! order in the config.
//!
//! The key is the first capture group of a path pattern, a header's value, or a `baggage`
//! member's value. A request without one goes round robin, or is refused with 400
//! (`fallback: reject`).

use attache_config::{Shard as ShardConfig, ShardFallback};
use attache_filters::Body;
use attache_filters::codec::percent;
use attache_filters::flags::murmur3::murmur3_x86_32;
use attache_filters::trace_context::baggage;
use http::{HeaderName, Request};

use super::balance::{Balancer, RoundRobin};

/// Where a request's key is.
enum Source {
    Path(regex_lite::Regex),
    Header(HeaderName),
    Baggage(String),
}

/// The sharding balancer of one upstream.
pub struct Shard {
    source: Source,
    reject: bool,
    /// Per endpoint, in order: the seed its scores use.
    seeds: Vec<u32>,
    fallback: RoundRobin,
}

impl Shard {
    /// The balancer for `config` over endpoints at `addresses` (`host:port`).
    pub fn new(config: &ShardConfig, addresses: &[String]) -> anyhow::Result<Self> {
        let source = match (&config.path, &config.header, &config.baggage) {
            (Some(p), None, None) => Source::Path(regex_lite::Regex::new(p)?),
            (None, Some(h), None) => Source::Header(HeaderName::from_bytes(h.as_bytes())?),
            (None, None, Some(b)) => Source::Baggage(b.clone()),
            _ => anyhow::bail!("a shard key needs exactly one of path, header, baggage"),
        };
        Ok(Self {
            source,
            reject: config.fallback == ShardFallback::Reject,
            seeds: addresses
                .iter()
                .map(|a| murmur3_x86_32(a.as_bytes(), 0))
                .collect(),
            fallback: RoundRobin::default(),
        })
    }

    /// The request's key, if it has one.
    fn key<'r>(&self, req: &'r Request<Body>) -> Option<std::borrow::Cow<'r, [u8]>> {
        use std::borrow::Cow;
        match &self.source {
            Source::Path(re) => {
                let path = req.uri().path();
                let found = re.captures(path)?.get(1)?;
                Some(Cow::Borrowed(found.as_str().as_bytes()))
            }
            Source::Header(name) => {
                let v = req.headers().get(name)?.as_bytes();
                (!v.is_empty()).then_some(Cow::Borrowed(v))
            }
            Source::Baggage(key) => baggage::members(req.headers())
                .flatten()
                .find(|m| m.key == key)
                .map(|m| percent::decode(m.value.as_bytes()).into_owned())
                .filter(|v| !v.is_empty())
                .map(Cow::Owned),
        }
    }

    /// The endpoint that wins `key`: the highest score, the lowest index on a tie.
    pub fn owner(&self, key: &[u8]) -> usize {
        let mut best = (0u32, 0usize);
        for (i, seed) in self.seeds.iter().enumerate() {
            let score = murmur3_x86_32(key, *seed);
            if i == 0 || score > best.0 {
                best = (score, i);
            }
        }
        best.1
    }
}

impl Balancer for Shard {
    fn pick(&self, req: &Request<Body>, len: usize) -> Option<usize> {
        match self.key(req) {
            Some(key) => Some(self.owner(&key).min(len.saturating_sub(1))),
            None if self.reject => None,
            None => Some(self.fallback.turn(len)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(source: (&str, &str), n: usize, fallback: ShardFallback) -> Shard {
        let mut config = ShardConfig {
            path: None,
            header: None,
            baggage: None,
            fallback,
        };
        match source.0 {
            "path" => config.path = Some(source.1.into()),
            "header" => config.header = Some(source.1.into()),
            _ => config.baggage = Some(source.1.into()),
        }
        Shard::new(&config, &addresses(n)).unwrap()
    }

    fn addresses(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut r = Request::get(path);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(attache_filters::empty()).unwrap()
    }

    #[test]
    fn a_key_always_reaches_the_same_endpoint_and_keys_spread() {
        let s = shard(("header", "x-user"), 4, ShardFallback::Reject);
        let mut counts = [0usize; 4];
        for u in 0..4000 {
            let user = format!("user-{u}");
            let first = s.pick(&req("/", &[("x-user", &user)]), 4).unwrap();
            for _ in 0..3 {
                assert_eq!(s.pick(&req("/", &[("x-user", &user)]), 4), Some(first));
            }
            counts[first] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "an even spread: {counts:?}");
        }
    }

    #[test]
    fn adding_an_endpoint_moves_about_one_in_n_plus_one_keys_all_to_it() {
        let four = Shard::new(
            &ShardConfig {
                path: None,
                header: Some("x-user".into()),
                baggage: None,
                fallback: ShardFallback::Reject,
            },
            &addresses(4),
        )
        .unwrap();
        let five = Shard::new(
            &ShardConfig {
                path: None,
                header: Some("x-user".into()),
                baggage: None,
                fallback: ShardFallback::Reject,
            },
            &addresses(5),
        )
        .unwrap();
        let keys = 10_000;
        let mut moved = 0;
        for k in 0..keys {
            let key = format!("key-{k}");
            let (before, after) = (four.owner(key.as_bytes()), five.owner(key.as_bytes()));
            if before != after {
                moved += 1;
                assert_eq!(after, 4, "a moved key goes to the new endpoint");
            }
        }
        // 1/5 of the keys, within a few percent.
        assert!((1700..2300).contains(&moved), "{moved} of {keys} moved");
        // The order of the endpoints in the config does not matter.
        let mut reversed = addresses(4);
        reversed.reverse();
        let rev = Shard::new(
            &ShardConfig {
                path: None,
                header: Some("x-user".into()),
                baggage: None,
                fallback: ShardFallback::Reject,
            },
            &reversed,
        )
        .unwrap();
        for k in 0..100 {
            let key = format!("key-{k}");
            assert_eq!(
                addresses(4)[four.owner(key.as_bytes())],
                reversed[rev.owner(key.as_bytes())]
            );
        }
    }

    #[test]
    fn keys_come_from_a_path_capture_a_header_or_baggage_and_their_absence_falls_back() {
        let by_path = shard(("path", "^/users/([^/]+)/"), 3, ShardFallback::Reject);
        let a = by_path.pick(&req("/users/ann/orders", &[]), 3);
        assert_eq!(a, by_path.pick(&req("/users/ann/profile", &[]), 3));
        assert_eq!(a, Some(by_path.owner(b"ann")));
        assert_eq!(by_path.pick(&req("/health", &[]), 3), None, "reject");

        let by_baggage = shard(("baggage", "tenant"), 3, ShardFallback::RoundRobin);
        let got = by_baggage.pick(&req("/", &[("baggage", "a=1,tenant=acme%20co")]), 3);
        assert_eq!(got, Some(by_baggage.owner(b"acme co")), "percent-decoded");
        // No key, round robin: each endpoint in turn.
        let turns: Vec<_> = (0..3)
            .map(|_| by_baggage.pick(&req("/", &[]), 3).unwrap())
            .collect();
        assert_eq!(turns, [0, 1, 2]);
    }
}
