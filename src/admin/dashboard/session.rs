//! The dashboard's session: a cookie signed with `DASHBOARD_SESSION_SECRET`
//! (HMAC-SHA256) that names the signed-in operator and when the session
//! ends, and the CSRF token derived from it that every mutation must echo
//! in `X-CSRF-Token`. Nothing is kept server-side: a replica verifies a
//! session another replica issued, and signing out clears the cookie.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

/// The cookie's name.
pub const COOKIE: &str = "obleth_session";

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Who signed in, as the audit log names them (without the `dashboard:`
    /// prefix).
    pub operator: String,
    /// Seconds since the Unix epoch.
    pub expires: u64,
    nonce: String,
}

/// Issues and verifies sessions with one secret.
#[derive(Clone)]
pub struct Sessions {
    secret: Vec<u8>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        Self {
            secret: secret.to_vec(),
            ttl,
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session for `operator`, and the cookie value that carries it.
    pub fn issue(&self, operator: &str) -> Option<(Session, String)> {
        let mut nonce = [0u8; 16];
        openssl::rand::rand_bytes(&mut nonce).ok()?;
        let session = Session {
            operator: operator.to_string(),
            expires: now() + self.ttl.as_secs(),
            nonce: hex::encode(nonce),
        };
        let body = format!(
            "{}.{}.{}",
            hex::encode(&session.operator),
            session.expires,
            session.nonce
        );
        let mac = self.mac(&format!("session|{body}"))?;
        Some((session, format!("{body}.{mac}")))
    }

    /// The session a cookie value carries, if its signature holds and it
    /// has not expired.
    pub fn verify(&self, value: &str) -> Option<Session> {
        let (body, mac) = value.rsplit_once('.')?;
        let expected = self.mac(&format!("session|{body}"))?;
        if !same(expected.as_bytes(), mac.as_bytes()) {
            return None;
        }
        let mut parts = body.split('.');
        let operator = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
        let expires: u64 = parts.next()?.parse().ok()?;
        let nonce = parts.next()?.to_string();
        if parts.next().is_some() || expires <= now() {
            return None;
        }
        Some(Session {
            operator,
            expires,
            nonce,
        })
    }

    /// The CSRF token of `session`: only a page that could read the
    /// session's own answer (same origin) knows it.
    pub fn csrf(&self, session: &Session) -> Option<String> {
        self.mac(&format!("csrf|{}", session.nonce))
    }

    /// Whether `presented` is the CSRF token of `session`.
    pub fn csrf_holds(&self, session: &Session, presented: &str) -> bool {
        self.csrf(session)
            .is_some_and(|expected| same(expected.as_bytes(), presented.as_bytes()))
    }

    fn mac(&self, message: &str) -> Option<String> {
        let key = PKey::hmac(&self.secret).ok()?;
        let mut signer = Signer::new(MessageDigest::sha256(), &key).ok()?;
        signer.update(message.as_bytes()).ok()?;
        signer.sign_to_vec().ok().map(hex::encode)
    }
}

/// Whether `a` and `b` are equal, in time independent of where they differ
/// (`openssl::memcmp::eq` alone panics on different lengths).
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(
            b"a session secret of enough length!!",
            Duration::from_secs(60),
        )
    }

    #[test]
    fn an_issued_session_verifies_and_names_its_operator() {
        let (session, cookie) = sessions().issue("alice").unwrap();
        assert_eq!(sessions().verify(&cookie), Some(session.clone()));
        assert_eq!(session.operator, "alice");
        let csrf = sessions().csrf(&session).unwrap();
        assert!(sessions().csrf_holds(&session, &csrf));
        assert!(!sessions().csrf_holds(&session, "0"));
    }

    #[test]
    fn a_forged_or_foreign_or_expired_cookie_is_refused() {
        let (_, cookie) = sessions().issue("alice").unwrap();
        let (body, mac) = cookie.rsplit_once('.').unwrap();
        // Another operator's name under the old signature.
        let forged = body.replacen(&hex::encode("alice"), &hex::encode("mallory"), 1);
        assert_eq!(sessions().verify(&format!("{forged}.{mac}")), None);
        assert_eq!(sessions().verify(&format!("{body}.00")), None);
        assert_eq!(sessions().verify("garbage"), None);
        let other = Sessions::new(
            b"another secret, just as long as it!!",
            Duration::from_secs(60),
        );
        assert_eq!(other.verify(&cookie), None);
        let expired = Sessions::new(b"a session secret of enough length!!", Duration::ZERO);
        let (_, cookie) = expired.issue("alice").unwrap();
        assert_eq!(expired.verify(&cookie), None);
    }
}
