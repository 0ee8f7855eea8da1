//! The listeners' ports at start-up. Pingora binds a listener only once the
//! server runs, and when the port is taken it retries for 30 seconds, then
//! gives up inside its service while the process (and its admin port) stays
//! up. obleth wants HAProxy's behaviour instead: a port in use stops
//! start-up at once, naming the listener. So the ports are claimed here
//! first and let go just before Pingora binds them, and readiness waits
//! until this process (not whoever else holds the port) listens on each.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};

use crate::config::ListenerConfig;

/// A listener's port that another socket already holds.
#[derive(Debug, thiserror::Error)]
#[error("listener {name}: cannot bind {address}: {source}")]
pub struct PortTaken {
    name: String,
    address: SocketAddr,
    source: std::io::Error,
}

/// The listeners' ports, held from configuration to serving.
pub struct PortClaim(Vec<TcpListener>);

impl PortClaim {
    /// Binds every listener's address (as Pingora does, with
    /// `SO_REUSEADDR`, so connections of an earlier process in TIME_WAIT do
    /// not count as taken).
    pub fn take(listeners: &[ListenerConfig]) -> Result<Self, PortTaken> {
        Self::take_addresses(listeners.iter().map(|l| (l.name.as_str(), l.address)))
    }

    fn take_addresses<'a>(
        listeners: impl Iterator<Item = (&'a str, SocketAddr)>,
    ) -> Result<Self, PortTaken> {
        listeners
            .map(|(name, address)| {
                TcpListener::bind(address).map_err(|source| PortTaken {
                    name: name.to_string(),
                    address,
                    source,
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Lets the ports go, for Pingora to bind them next.
    pub fn release(self) {
        drop(self.0);
    }
}

/// Whether this process has a socket listening on `addr`: `None` where
/// `/proc` cannot tell (then a connection that succeeds is taken as yes).
pub fn listened_on_here(addr: SocketAddr) -> Option<bool> {
    let own = own_socket_inodes()?;
    let tables = ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .filter_map(|table| std::fs::read_to_string(table).ok());
    let mut found = false;
    for table in tables {
        found |= table
            .lines()
            .skip(1)
            .filter_map(ListeningSocket::parse)
            .any(|s| s.port == addr.port() && own.contains(&s.inode));
    }
    Some(found)
}

/// The inodes of the sockets among this process's open descriptors.
fn own_socket_inodes() -> Option<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok());
        inodes.extend(inode);
    }
    Some(inodes)
}

/// One row of `/proc/net/tcp` in the LISTEN state.
struct ListeningSocket {
    port: u16,
    inode: u64,
}

impl ListeningSocket {
    /// `  0: 0100007F:1F90 00000000:0000 0A … inode …`: the local address,
    /// the remote one, the state (0A is LISTEN), then the inode tenth.
    fn parse(row: &str) -> Option<Self> {
        let fields: Vec<&str> = row.split_whitespace().collect();
        if fields.get(3) != Some(&"0A") {
            return None;
        }
        let (_, port) = fields.get(1)?.rsplit_once(':')?;
        Some(Self {
            port: u16::from_str_radix(port, 16).ok()?,
            inode: fields.get(9)?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_held_here_is_seen_as_ours_and_a_claim_on_it_names_the_listener() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        assert_eq!(listened_on_here(addr), Some(true));

        let err = PortClaim::take_addresses([("public", addr)].into_iter())
            .err()
            .expect("the port is held");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("listener public: cannot bind {addr}: ")),
            "{text}"
        );
        assert_eq!(err.source.kind(), std::io::ErrorKind::AddrInUse);

        drop(held);
        assert_eq!(listened_on_here(addr), Some(false));
    }
}
