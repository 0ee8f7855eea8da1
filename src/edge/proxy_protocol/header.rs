//! The PROXY protocol header (HAProxy's specification, versions 1 and 2):
//! what an L4 load balancer sends before the client's first byte to say
//! whose connection it is relaying. Pure parsing over a byte buffer, so the
//! connection side can feed it what has arrived so far and the fuzzer can
//! feed it anything.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The twelve bytes that open a version 2 header; no HTTP request or TLS
/// record starts with them.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header is one text line of at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// Longest version 2 header taken: the addresses and a few TLVs (ALPN,
/// authority, unique id, SSL details). The wire format allows 64 KiB; a
/// sender needing more is not one an edge should wait on.
pub const V2_MAX: usize = 16 + 1024;

/// What a complete header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The relay speaks for a client: these are the client's address and
    /// the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The relay's own connection (v2 `LOCAL`, a health check) or one whose
    /// addresses are not IP (v1 `UNKNOWN`, v2 `AF_UNSPEC` or `AF_UNIX`):
    /// the socket's own addresses stand.
    Local,
}

/// How far a buffer holding the start of a connection has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The header is not complete yet: read at least this many bytes in all.
    Incomplete { at_least: usize },
    /// The header ends after `length` bytes; what follows is the client's.
    Complete { header: ProxyHeader, length: usize },
}

/// Why the bytes are not a PROXY header a trusted relay would send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("PROXY v1 line longer than 107 bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    #[error("unsupported PROXY v2 version or command byte {0:#04x}")]
    V2Command(u8),
    #[error("unsupported PROXY v2 address family byte {0:#04x}")]
    V2Family(u8),
    #[error("PROXY v2 header of {0} bytes is longer than the {V2_MAX} taken")]
    V2TooLong(usize),
    #[error("PROXY v2 address block of {0} bytes is too short for its family")]
    V2Short(usize),
}

/// Parses the header at the start of `buf`, the bytes read from a
/// connection so far.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if buf.len() < V2_SIGNATURE.len() {
        // Both versions must still be possible for what has arrived.
        let v1 = b"PROXY ".get(..buf.len().min(6)) == Some(&buf[..buf.len().min(6)]);
        let v2 = V2_SIGNATURE.starts_with(buf);
        return if v1 || v2 {
            Ok(Parsed::Incomplete {
                at_least: if v2 && !v1 { 16 } else { buf.len() + 1 },
            })
        } else {
            Err(HeaderError::Missing)
        };
    }
    if buf.starts_with(V2_SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(b"PROXY ") {
        parse_v1(buf)
    } else {
        Err(HeaderError::Missing)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(HeaderError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete {
                at_least: buf.len() + 1,
            })
        };
    };
    let line = window[..lf]
        .strip_suffix(b"\r")
        .ok_or(HeaderError::V1Malformed("the line does not end in CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| HeaderError::V1Malformed("not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY"
    let header = match fields.next() {
        Some("UNKNOWN") => ProxyHeader::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut next = || {
                fields
                    .next()
                    .ok_or(HeaderError::V1Malformed("missing field"))
            };
            let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
            if fields.next().is_some() {
                return Err(HeaderError::V1Malformed("extra field"));
            }
            let ip = |text: &str| -> Result<IpAddr, HeaderError> {
                let ip = if family == "TCP4" {
                    text.parse::<Ipv4Addr>().map(IpAddr::V4)
                } else {
                    text.parse::<Ipv6Addr>().map(IpAddr::V6)
                };
                ip.map_err(|_| HeaderError::V1Malformed("bad address"))
            };
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(src)?, v1_port(sport)?),
                destination: SocketAddr::new(ip(dst)?, v1_port(dport)?),
            }
        }
        _ => return Err(HeaderError::V1Malformed("unknown protocol family")),
    };
    Ok(Parsed::Complete {
        header,
        length: lf + 1,
    })
}

/// A port as v1 writes it: decimal, no sign, no leading zero.
fn v1_port(text: &str) -> Result<u16, HeaderError> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    match text.parse() {
        Ok(port) if canonical => Ok(port),
        _ => Err(HeaderError::V1Malformed("bad port")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete { at_least: 16 });
    }
    let command = buf[12];
    let family = buf[13];
    let length = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if command >> 4 != 2 || command & 0x0f > 1 {
        return Err(HeaderError::V2Command(command));
    }
    if length > V2_MAX {
        return Err(HeaderError::V2TooLong(length));
    }
    if buf.len() < length {
        return Ok(Parsed::Incomplete { at_least: length });
    }
    let addresses = &buf[16..length];
    let local = command & 0x0f == 0;
    let header = match family >> 4 {
        _ if local => ProxyHeader::Local,
        0 | 3 => ProxyHeader::Local,
        1 => {
            let a = addresses
                .get(..12)
                .ok_or(HeaderError::V2Short(addresses.len()))?;
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]));
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([a[8], a[9]])),
                destination: SocketAddr::new(ip(4), u16::from_be_bytes([a[10], a[11]])),
            }
        }
        2 => {
            let a = addresses
                .get(..36)
                .ok_or(HeaderError::V2Short(addresses.len()))?;
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([a[32], a[33]])),
                destination: SocketAddr::new(ip(16), u16::from_be_bytes([a[34], a[35]])),
            }
        }
        _ => return Err(HeaderError::V2Family(family)),
    };
    // Only stream transports carry HTTP: a datagram family is refused.
    if !local && !matches!(family & 0x0f, 0 | 1) {
        return Err(HeaderError::V2Family(family));
    }
    Ok(Parsed::Complete { header, length })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, length }) => (header, length),
            other => panic!("not complete: {other:?}"),
        }
    }

    fn proxied(source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader::Proxied {
            source: source.parse().expect("address"),
            destination: destination.parse().expect("address"),
        }
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(command);
        out.push(family);
        out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        out.extend_from_slice(addresses);
        out
    }

    #[test]
    fn a_v1_tcp4_line_gives_the_client_and_leaves_what_follows() {
        let buf = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let (header, length) = complete(buf);
        assert_eq!(header, proxied("203.0.113.7:51234", "10.0.0.1:443"));
        assert_eq!(&buf[length..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn a_v1_tcp6_line_and_unknown_are_understood() {
        let (header, _) = complete(b"PROXY TCP6 2001:db8::1 ::1 65535 80\r\n");
        assert_eq!(header, proxied("[2001:db8::1]:65535", "[::1]:80"));
        let (header, length) = complete(b"PROXY UNKNOWN ffff::1 whatever\r\nX");
        assert_eq!((header, length), (ProxyHeader::Local, 32));
        assert_eq!(complete(b"PROXY UNKNOWN\r\n").0, ProxyHeader::Local);
    }

    #[test]
    fn malformed_v1_lines_are_refused() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeaderError::V1Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Err(HeaderError::V1TooLong));
    }

    #[test]
    fn a_v2_proxy_header_gives_ipv4_and_ipv6_clients() {
        let v4 = v2(
            0x21,
            0x11,
            &[198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb],
        );
        let with_body = [v4.as_slice(), b"\x16\x03\x01"].concat();
        let (header, length) = complete(&with_body);
        assert_eq!(header, proxied("198.51.100.9:8080", "10.0.0.1:443"));
        assert_eq!(length, v4.len());

        let mut a6 = Vec::new();
        a6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().expect("ip").octets());
        a6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        a6.extend_from_slice(&[0, 80, 0, 81]);
        // TLVs after the addresses are skipped.
        a6.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        let (header, length) = complete(&v2(0x21, 0x21, &a6));
        assert_eq!(header, proxied("[2001:db8::7]:80", "[::1]:81"));
        assert_eq!(length, 16 + a6.len());
    }

    #[test]
    fn v2_local_and_unspecified_keep_the_socket_addresses() {
        assert_eq!(complete(&v2(0x20, 0x00, &[])).0, ProxyHeader::Local);
        assert_eq!(complete(&v2(0x20, 0x11, &[0; 12])).0, ProxyHeader::Local);
        assert_eq!(complete(&v2(0x21, 0x00, &[])).0, ProxyHeader::Local);
        assert_eq!(complete(&v2(0x21, 0x31, &[0; 216])).0, ProxyHeader::Local);
    }

    #[test]
    fn bad_v2_headers_are_refused() {
        assert_eq!(
            parse(&v2(0x11, 0x11, &[0; 12])),
            Err(HeaderError::V2Command(0x11))
        );
        assert_eq!(
            parse(&v2(0x22, 0x11, &[0; 12])),
            Err(HeaderError::V2Command(0x22))
        );
        assert_eq!(
            parse(&v2(0x21, 0x12, &[0; 12])),
            Err(HeaderError::V2Family(0x12))
        );
        assert_eq!(
            parse(&v2(0x21, 0x41, &[0; 12])),
            Err(HeaderError::V2Family(0x41))
        );
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 12])),
            Err(HeaderError::V2Short(12))
        );
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(HeaderError::V2TooLong(16 + 0xffff)));
    }

    #[test]
    fn a_header_arriving_in_pieces_asks_for_more_until_complete() {
        for whole in [
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            v2(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]),
        ] {
            for cut in 0..whole.len() {
                match parse(&whole[..cut]) {
                    Ok(Parsed::Incomplete { at_least }) => {
                        assert!(at_least > cut && at_least <= whole.len(), "{cut}")
                    }
                    other => panic!("{cut}: {other:?}"),
                }
            }
            assert!(matches!(parse(&whole), Ok(Parsed::Complete { .. })));
        }
    }

    #[test]
    fn a_connection_without_a_header_is_told_apart_at_once() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HeaderError::Missing));
        assert_eq!(parse(b"G"), Err(HeaderError::Missing));
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Err(HeaderError::Missing));
        assert_eq!(parse(b"PROXX"), Err(HeaderError::Missing));
    }
}
