//! What obleth tells the upstream about the original request: the request
//! id, `X-Forwarded-For`, `-Proto` and `-Host`; and who the client is when
//! trusted proxies stand in front.
//!
//! These headers are written on every proxied request, so values are built
//! without formatting machinery and reuse the client's bytes where they can:
//! a `HeaderValue` cloned from the request head shares its buffer.

use std::net::IpAddr;

use http::header::{self, HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::RequestHeader;
use pingora::prelude::*;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Names as written on the wire. Pingora keeps the case of every header
/// name; a static name is taken as it is, where a `HeaderName` is copied.
pub(crate) const X_REQUEST_ID_WIRE: &str = "X-Request-Id";
const X_FORWARDED_FOR_WIRE: &str = "X-Forwarded-For";
const X_FORWARDED_PROTO_WIRE: &str = "X-Forwarded-Proto";
const X_FORWARDED_HOST_WIRE: &str = "X-Forwarded-Host";

/// Longest client-supplied request id that is kept.
const MAX_REQUEST_ID: usize = 128;

/// The id that ties a request's access log line, usage record, upstream
/// request and response together: the client's `X-Request-Id` when it sent
/// exactly one usable value, otherwise 128 random bits in hex.
#[derive(Debug, Clone)]
pub struct RequestId {
    value: HeaderValue,
    /// The upstream request already carries this id as the client sent it.
    from_client: bool,
}

impl Default for RequestId {
    fn default() -> Self {
        Self {
            value: HeaderValue::from_static(""),
            from_client: false,
        }
    }
}

impl RequestId {
    pub fn of(request: &RequestHeader) -> Self {
        let mut sent = request.headers.get_all(&X_REQUEST_ID).iter();
        if let (Some(value), None) = (sent.next(), sent.next()) {
            if !value.is_empty() && value.len() <= MAX_REQUEST_ID && value.to_str().is_ok() {
                return Self {
                    value: value.clone(),
                    from_client: true,
                };
            }
        }
        Self::random()
    }

    fn random() -> Self {
        let mut text = [0u8; 32];
        // Cannot fail: 16 bytes always fill 32 hex digits.
        let _ = hex::encode_to_slice(rand::random::<u128>().to_be_bytes(), &mut text);
        Self {
            value: HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("")),
            from_client: false,
        }
    }

    pub fn as_str(&self) -> &str {
        self.value.to_str().unwrap_or_default()
    }

    /// The id as a header value; cloning it shares the bytes.
    pub fn header(&self) -> &HeaderValue {
        &self.value
    }
}

/// Adds the forwarding headers to the upstream request. Values the client
/// sent are kept (and `X-Forwarded-For` extended) only when the client is a
/// trusted proxy; otherwise they are replaced.
pub(crate) fn add_forwarding_headers(
    upstream: &mut RequestHeader,
    downstream: &RequestHeader,
    client: Option<IpAddr>,
    trusted: bool,
    scheme: &'static str,
    id: &RequestId,
) -> Result<()> {
    match (client, upstream.headers.get(&X_FORWARDED_FOR)) {
        (Some(ip), Some(prior)) if trusted => {
            let ip = ip_text(ip);
            let mut chain = Vec::with_capacity(prior.len() + 2 + ip.len);
            chain.extend_from_slice(prior.as_bytes());
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(ip.as_bytes());
            upstream.insert_header(X_FORWARDED_FOR_WIRE, chain)?;
        }
        (Some(ip), _) => upstream.insert_header(X_FORWARDED_FOR_WIRE, ip_text(ip).as_bytes())?,
        (None, _) => {
            upstream.remove_header(&X_FORWARDED_FOR);
        }
    }
    if !(trusted && upstream.headers.contains_key(&X_FORWARDED_PROTO)) {
        upstream.insert_header(X_FORWARDED_PROTO_WIRE, HeaderValue::from_static(scheme))?;
    }
    if !(trusted && upstream.headers.contains_key(&X_FORWARDED_HOST)) {
        match original_host(downstream) {
            Some(host) => upstream.insert_header(X_FORWARDED_HOST_WIRE, host)?,
            None => {
                upstream.remove_header(&X_FORWARDED_HOST);
            }
        }
    }
    if !id.from_client {
        upstream.insert_header(X_REQUEST_ID_WIRE, id.value.clone())?;
    }
    Ok(())
}

/// The client's address: the connection's peer, or, when the peer is a
/// trusted proxy, the last address of its `X-Forwarded-For` chain that is
/// not itself a trusted proxy (addresses left of it could be forged by the
/// client). An entry that is not an address ends the walk at the proxy
/// that wrote it.
pub(crate) fn client_address(
    peer: Option<IpAddr>,
    request: &RequestHeader,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer?;
    if !is_trusted(&client) {
        return Some(client);
    }
    let chain = request
        .headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for entry in chain.iter().rev() {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

/// The host the client asked for, port included: the authority of an
/// absolute-form target, else the `Host` header (shared, not copied).
fn original_host(request: &RequestHeader) -> Option<HeaderValue> {
    if let Some(authority) = request.uri.authority() {
        return HeaderValue::from_str(authority.as_str()).ok();
    }
    request
        .headers
        .get(header::HOST)
        .filter(|v| !v.is_empty() && v.to_str().is_ok())
        .cloned()
}

/// An address as text without `fmt`: IPv4 (the common case) by hand.
fn ip_text(ip: IpAddr) -> IpText {
    let mut text = IpText {
        bytes: [0; 45],
        len: 0,
    };
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b'.');
                }
                if octet >= 100 {
                    text.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    text.push(b'0' + octet / 10 % 10);
                }
                text.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            let formatted = v6.to_string();
            for b in formatted.bytes() {
                text.push(b);
            }
        }
    }
    text
}

/// Fixed room for the longest textual address (IPv4-mapped IPv6).
struct IpText {
    bytes: [u8; 45],
    len: usize,
}

impl IpText {
    fn push(&mut self, b: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Request fields that are hop-by-hop (RFC 9110 §7.6.1) or frame the body,
/// which Pingora strips or renormalises before a request goes upstream.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "http2-settings",
];

/// Whether the request carries any field Pingora's upstream-request policy
/// would strip or rewrite; when it carries none, the policy has nothing to
/// do and can be skipped.
pub fn carries_hop_by_hop(req: &RequestHeader) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|name| req.headers.contains_key(*name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn request_with(forwarded: &[&str]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        for value in forwarded {
            req.append_header("x-forwarded-for", *value)
                .expect("header");
        }
        req
    }

    #[test]
    fn the_client_is_the_last_untrusted_address_behind_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        let client =
            |peer: &str, xff: &[&str]| client_address(ip(peer), &request_with(xff), &trusted);
        // An untrusted peer's header is ignored: it could say anything.
        assert_eq!(client("203.0.113.9", &["1.1.1.1"]), ip("203.0.113.9"));
        // A trusted peer vouches for the address it saw.
        assert_eq!(client("10.0.0.2", &["198.51.100.7"]), ip("198.51.100.7"));
        // Forged entries left of the first untrusted one do not count.
        assert_eq!(
            client("10.0.0.2", &["6.6.6.6, 198.51.100.7, 10.0.0.3"]),
            ip("198.51.100.7")
        );
        // Several header lines are one list.
        assert_eq!(
            client("10.0.0.2", &["6.6.6.6", "198.51.100.7"]),
            ip("198.51.100.7")
        );
        // Garbage stops the walk at the proxy that wrote it.
        assert_eq!(client("10.0.0.2", &["nonsense, 10.0.0.4"]), ip("10.0.0.4"));
        // A trusted peer without a header is the client.
        assert_eq!(client("10.0.0.2", &[]), ip("10.0.0.2"));
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        let samples = [
            IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 99, 100, 255)),
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6("2001:db8::8a2e:370:7334".parse().unwrap()),
            IpAddr::V6("::ffff:255.255.255.255".parse().unwrap()),
        ];
        for ip in samples {
            assert_eq!(ip_text(ip).as_bytes(), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn a_generated_request_id_is_32_hex_digits_and_fresh() {
        let request = RequestHeader::build("GET", b"/", None).unwrap();
        let a = RequestId::of(&request);
        let b = RequestId::of(&request);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.as_str(), b.as_str());
        assert!(!a.from_client);
    }

    #[test]
    fn a_client_request_id_is_kept_only_when_single_and_usable() {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        request.insert_header("X-Request-Id", "abc-123").unwrap();
        let id = RequestId::of(&request);
        assert_eq!((id.as_str(), id.from_client), ("abc-123", true));

        request.append_header("X-Request-Id", "second").unwrap();
        assert!(!RequestId::of(&request).from_client);

        request
            .insert_header("X-Request-Id", "x".repeat(129))
            .unwrap();
        assert!(!RequestId::of(&request).from_client);
    }

    #[test]
    fn only_requests_with_hop_by_hop_fields_need_the_upstream_policy() {
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).expect("head");
        req.insert_header("content-type", "application/json")
            .expect("field");
        req.insert_header("content-length", "10").expect("field");
        assert!(!carries_hop_by_hop(&req));
        for field in [
            "Connection",
            "TE",
            "Transfer-Encoding",
            "Upgrade",
            "Keep-Alive",
        ] {
            let mut with = req.clone();
            with.insert_header(field, "x").expect("field");
            assert!(carries_hop_by_hop(&with), "{field}");
        }
    }
}
