//! PROXY protocol on a listener (`listeners[].proxy_protocol`): a cloud L4
//! load balancer or another HAProxy tier in front says whose connection it
//! relays, and from then on that client's address is the connection's peer
//! address everywhere — `X-Forwarded-For`, the access log, hash balancing,
//! rate limits, ACLs — because they all read the socket digest this sets.
//!
//! - [`header`]: the v1/v2 header parser, pure and fuzzed.
//! - [`ProxyProtocol`]: the listener's policy and the read of one header,
//!   run before TLS on TLS listeners (Pingora's pre-TLS hook) and before
//!   HTTP on plaintext ones.
//!
//! A connection from outside `trusted`, or whose header is missing or
//! malformed, is closed without a byte written and counted in
//! `obleth_connections_closed_total{reason}`; one whose header has not
//! arrived within `timeout` likewise.

pub mod header;

use std::os::fd::AsRawFd;

use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use tokio::io::AsyncReadExt;

use crate::config::ProxyProtocolSettings;
use crate::metrics::FAMILIES;
use header::{Parsed, ProxyHeader};

/// A listener's PROXY protocol policy in force.
#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    settings: ProxyProtocolSettings,
}

/// Why a connection was closed before its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer is not one of the trusted relays.
    Untrusted,
    /// The connection did not start with a well-formed header.
    Invalid,
    /// The header did not arrive in time, or the peer closed first.
    Timeout,
}

impl Refusal {
    /// The `reason` label of `obleth_connections_closed_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Untrusted => "proxy_protocol_untrusted",
            Refusal::Invalid => "proxy_protocol_invalid",
            Refusal::Timeout => "proxy_protocol_timeout",
        }
    }
}

impl ProxyProtocol {
    pub fn new(settings: ProxyProtocolSettings) -> Self {
        Self { settings }
    }

    /// Reads the header that opens `stream` and makes its client the
    /// stream's peer; the bytes after the header stay unread for TLS or
    /// HTTP.
    pub async fn accept(&self, stream: &mut L4Stream) -> Result<(), Refusal> {
        let refusal = match self.read_header(stream).await {
            Ok(()) => return Ok(()),
            Err(refusal) => refusal,
        };
        FAMILIES
            .connections_closed
            .with_label_values(&[refusal.reason()])
            .inc();
        tracing::debug!(
            peer = ?peer_of(stream),
            "PROXY protocol: connection closed ({})",
            refusal.reason()
        );
        Err(refusal)
    }

    async fn read_header(&self, stream: &mut L4Stream) -> Result<(), Refusal> {
        // A relay reaching a `[::]` listener over IPv4 shows as ::ffff:a.b.c.d.
        let peer = peer_of(stream)
            .ok_or(Refusal::Untrusted)?
            .ip()
            .to_canonical();
        if !self.settings.trusted.iter().any(|net| net.contains(&peer)) {
            return Err(Refusal::Untrusted);
        }
        let (header, rest) =
            tokio::time::timeout(self.settings.timeout, read_until_complete(stream))
                .await
                .map_err(|_| Refusal::Timeout)??;
        // What arrived with the header belongs to the client: put it back.
        stream.rewind(&rest);
        if let ProxyHeader::Proxied {
            source,
            destination,
        } = header
        {
            let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
            let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(source)));
            let _ = digest.local_addr.set(Some(PingoraAddr::Inet(destination)));
            stream.set_socket_digest(digest);
        }
        Ok(())
    }
}

fn peer_of(stream: &L4Stream) -> Option<std::net::SocketAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().copied()))
}

/// Reads until the buffer holds a whole header; returns it and the bytes
/// read past it.
async fn read_until_complete(stream: &mut L4Stream) -> Result<(ProxyHeader, Vec<u8>), Refusal> {
    let mut buf = Vec::with_capacity(256);
    loop {
        match header::parse(&buf).map_err(|_| Refusal::Invalid)? {
            Parsed::Complete { header, length } => return Ok((header, buf.split_off(length))),
            Parsed::Incomplete { at_least } => {
                let had = buf.len();
                buf.resize(at_least.max(had + 1).clamp(256, header::V2_MAX), 0);
                let n = stream
                    .read(&mut buf[had..])
                    .await
                    .map_err(|_| Refusal::Timeout)?;
                buf.truncate(had + n);
                if n == 0 {
                    return Err(Refusal::Timeout);
                }
            }
        }
    }
}

/// The pre-TLS hook of a TLS listener with PROXY protocol: the header comes
/// before the ClientHello.
#[async_trait]
impl PreTlsProcess for ProxyProtocol {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        self.accept(stream).await.map_err(|refusal| {
            pingora::Error::explain(pingora::ErrorType::AcceptError, refusal.reason())
        })
    }
}
