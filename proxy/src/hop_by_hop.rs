//! Hop-by-hop header fields (RFC 9110 §7.6.1): the ones that concern one connection and are
//! never forwarded, and those a message's `Connection` line names.
//!
//! A request's are handled twice. On arrival ([`on_arrival`], the first step after the limits
//! in both flows), the fields the *received* `Connection` names are removed and the line is cut
//! down to what attache itself acts on (`upgrade`), so that a client cannot name the headers
//! attache adds later (trace context, flag decisions, the request id) and have them removed on
//! the way out. When the request leaves ([`strip_hop_by_hop`], in `forward.rs`), the fixed
//! hop-by-hop fields go, and the upgrade handshake is rebuilt when it is one. A response's are
//! stripped as it is received from the app, before any layer adds its own.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

/// Fields that a `Connection` option never removes on arrival: without `Host` a request has no
/// target, and the body's framing was already read from `Content-Length`.
const NEVER_NAMED: [HeaderName; 2] = [header::HOST, header::CONTENT_LENGTH];

/// Removes the fields the received `Connection` lines name, and those lines, keeping only an
/// `upgrade` option (with its `Upgrade` field, which [`strip_hop_by_hop`] handles when the
/// request leaves). Standard hop-by-hop names (`keep-alive`, `te`, ...) are left for that step.
///
/// A request that arrived with both `Transfer-Encoding` and `Content-Length` was read by its
/// coding (RFC 9112 §6.3); its `Content-Length` goes too, so that nothing after (the
/// forwarder's framing included) mistakes it for the body's length.
pub fn on_arrival(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    if !headers.contains_key(header::CONNECTION) {
        return;
    }
    let mut upgrade = false;
    let mut named = Vec::new();
    for token in connection_options(headers) {
        if token.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
            continue;
        }
        let known = token.is_empty()
            || token.eq_ignore_ascii_case(b"close")
            || HOP_BY_HOP
                .iter()
                .chain(&NEVER_NAMED)
                .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(token));
        if !known && let Ok(name) = HeaderName::from_bytes(token) {
            named.push(name);
        }
    }
    for name in named {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The first transfer coding of a `Transfer-Encoding` line that is not `chunked` (hyper read
/// the chunked framing; anything under it would go on coded and unlabelled).
pub fn not_chunked(v: &http::HeaderValue) -> Option<String> {
    v.as_bytes()
        .split(|b| *b == b',')
        .map(|c| {
            // A coding's parameters (`;q=...`) are not part of its name.
            c.split(|b| *b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii()
        })
        .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"chunked"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
}

/// Whether an app's 101 answers what the request asked for: the request was an upgrade and the
/// response's `Upgrade` names one of its offers. Anything else is a tunnel nobody asked for.
pub fn upgrade_answers(asked: Option<&HeaderValue>, response: &HeaderMap) -> bool {
    let (Some(asked), Some(chosen)) = (asked, response.get(header::UPGRADE)) else {
        return false;
    };
    let chosen = chosen.as_bytes().trim_ascii();
    asked
        .as_bytes()
        .split(|b| *b == b',')
        .any(|offer| offer.trim_ascii().eq_ignore_ascii_case(chosen))
}

/// An HTTP/1.1 request asking to switch protocols (WebSocket and friends).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_options(headers).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The options of every `Connection` line, each trimmed of spaces and tabs, read as bytes: one
/// element that is not a token (a byte outside ASCII, say) does not hide the others.
fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
}

static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `transfer-encoding`'s bit in [`strip_hop_by_hop`]'s `present` (its index in [`HOP_BY_HOP`]).
const TRANSFER_ENCODING_BIT: u16 = 1 << 7;

/// Removes hop-by-hop headers, and those the `Connection` header names. With `keep_upgrade`
/// the upgrade handshake (`Connection: upgrade`, `Upgrade`) survives.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass of name comparisons finds which are present; most messages carry none or only
    // `Connection: keep-alive`, and then nothing is hashed or allocated.
    let mut present = 0u16;
    for name in headers.keys() {
        // A match on the name's text: its length picks the few candidates to compare.
        let i = match name.as_str() {
            "connection" => 0,
            "keep-alive" => 1,
            "proxy-connection" => 2,
            "proxy-authenticate" => 3,
            "proxy-authorization" => 4,
            "te" => 5,
            "trailer" => 6,
            "transfer-encoding" => 7,
            "upgrade" => 8,
            _ => continue,
        };
        present |= 1 << i;
    }
    if present == 0 && !keep_upgrade {
        return;
    }
    // Other headers named in `Connection` are hop-by-hop too.
    let mut named = Vec::new();
    for token in connection_options(headers) {
        let known = token.is_empty()
            || token.eq_ignore_ascii_case(b"close")
            || HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(token));
        if !known && let Ok(name) = HeaderName::from_bytes(token) {
            named.push(name);
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 && !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if present & TRANSFER_ENCODING_BIT != 0 {
        // RFC 9112 §6.3: with a `Transfer-Encoding`, a `Content-Length` beside it is not the
        // body's length (hyper read the body by the coding), and an intermediary must remove it
        // before forwarding; left in, the next hop would cut the body at that length.
        headers.remove(header::CONTENT_LENGTH);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_beside_a_transfer_coding_goes_on_arrival_and_on_the_way_out() {
        let both = || {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
            h.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            h
        };
        let mut h = both();
        on_arrival(&mut h);
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        assert!(
            h.contains_key(header::TRANSFER_ENCODING),
            "left for the way out"
        );
        let mut h = both();
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        // A length alone is the body's length, and stays.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        on_arrival(&mut h);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[header::CONTENT_LENGTH], "3");
    }

    #[test]
    fn on_arrival_the_named_fields_go_and_only_upgrade_stays_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-flags, Traceparent, host, content-length"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-flags", HeaderValue::from_static("{}"));
        h.insert("traceparent", HeaderValue::from_static("00-x"));
        h.insert(header::HOST, HeaderValue::from_static("app"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        on_arrival(&mut h);
        // What later steps add under those names survives: the client's line is gone.
        h.insert("x-flags", HeaderValue::from_static("{\"a\":1}"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.contains_key("x-flags"), "{h:?}");
        assert!(
            !h.contains_key("traceparent"),
            "the client's traceparent went on arrival"
        );
        assert_eq!(h[header::HOST], "app", "Host is never hop-by-hop");
        assert_eq!(h[header::CONTENT_LENGTH], "3", "nor the body's length");
        assert!(!h.contains_key(header::CONNECTION) && !h.contains_key(header::UPGRADE));
    }

    #[test]
    fn on_arrival_an_upgrade_request_stays_one() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("x-a, upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-a", HeaderValue::from_static("1"));
        on_arrival(&mut h);
        assert!(connection_has(&h, "upgrade"));
        assert!(!h.contains_key("x-a"));
        let mut none = HeaderMap::new();
        none.insert("x-a", HeaderValue::from_static("1"));
        on_arrival(&mut none);
        assert_eq!(none.len(), 1, "nothing named, nothing removed");
    }

    #[test]
    fn hop_by_hop_headers_and_connection_tokens_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn an_option_that_is_not_a_token_does_not_hide_the_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-secret,\tcaf\xe9 , X-Other").unwrap(),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(connection_has(&h, "Upgrade"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h, false);
            assert!(!h.contains_key(name), "{name} was kept");
            assert!(h.contains_key("x-kept"));
        }
    }

    #[test]
    fn upgrade_handshake_survives_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }
}
