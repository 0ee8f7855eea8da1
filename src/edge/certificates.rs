//! A TLS listener's certificates, chosen by SNI the way HAProxy's
//! `crt-list` does (`listeners[].tls.certificates`): exact names first,
//! then a wildcard one label deep, then the default (the first entry). An
//! RSA and an ECDSA certificate for the same names are both offered and
//! OpenSSL picks the one the client's signature algorithms allow.
//!
//! The set is held behind an [`ArcSwap`]: SIGHUP and
//! `POST /api/v1/certificates/reload` read the files again and swap it, so
//! new handshakes use the new certificates while established connections,
//! which hold no reference to the set, are untouched. A set that fails to
//! load leaves the running one in place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use openssl::asn1::Asn1Time;
use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{NameType, SslRef};
use openssl::x509::X509;
use pingora::listeners::TlsAccept;

use crate::config::{CertificateFiles, ListenerConfig};
use crate::metrics::FAMILIES;

/// Why a listener's certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a PEM {what}: {source}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        source: ErrorStack,
    },
    #[error("{path}: holds no certificate")]
    Empty { path: PathBuf },
    #[error("{key}: the private key does not belong to the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "{path}: the certificate names no host (no subjectAltName DNS name nor CN); give `names`"
    )]
    NoNames { path: PathBuf },
}

/// One certificate with its chain and key, as loaded from its files.
struct Loaded {
    /// Leaf first, then the intermediates.
    chain: Vec<X509>,
    key: PKey<Private>,
    /// Lower-cased; a leading `*.` makes a wildcard.
    names: Vec<String>,
    /// Unix time of the leaf's `notAfter`.
    expires: i64,
}

/// What a listener serves, indexed for the handshake.
struct CertificateSet {
    entries: Vec<Loaded>,
    index: NameIndex,
}

/// Which entries serve which server name.
struct NameIndex {
    exact: HashMap<String, Vec<usize>>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, Vec<usize>>,
    default: Vec<usize>,
}

/// A listener's certificates, swappable while it serves; see the module
/// docs.
pub struct ListenerCertificates {
    listener: String,
    files: ArcSwap<Vec<CertificateFiles>>,
    current: ArcSwap<CertificateSet>,
}

/// A loaded certificate as the admin API reports it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CertificateInfo {
    pub listener: String,
    /// The first of the names it serves, the label of its expiry metric.
    pub name: String,
    pub names: Vec<String>,
    pub cert: String,
    /// Unix time after which clients refuse it.
    pub expires_at: i64,
}

impl ListenerCertificates {
    /// Loads `files` for `listener`; start-up fails when they do not load.
    pub fn load(listener: &str, files: Vec<CertificateFiles>) -> Result<Self, CertificateError> {
        let set = CertificateSet::load(&files)?;
        let this = Self {
            listener: listener.to_string(),
            files: ArcSwap::from_pointee(files),
            current: ArcSwap::from_pointee(set),
        };
        this.publish_expiry(None);
        Ok(this)
    }

    /// Reads the files again — `files` when given, as a reloaded
    /// configuration names them — and swaps the set in for new handshakes.
    pub fn reload(&self, files: Option<Vec<CertificateFiles>>) -> Result<(), CertificateError> {
        let files = files
            .map(Arc::new)
            .unwrap_or_else(|| self.files.load_full());
        let set = CertificateSet::load(&files)?;
        let old = self.current.swap(Arc::new(set));
        self.files.store(files);
        self.publish_expiry(Some(&old));
        Ok(())
    }

    /// The loaded certificates, for the admin API.
    pub fn describe(&self) -> Vec<CertificateInfo> {
        let set = self.current.load();
        let files = self.files.load();
        set.entries
            .iter()
            .zip(files.iter())
            .map(|(e, f)| CertificateInfo {
                listener: self.listener.clone(),
                name: e.names.first().cloned().unwrap_or_default(),
                names: e.names.clone(),
                cert: f.cert.display().to_string(),
                expires_at: e.expires,
            })
            .collect()
    }

    fn publish_expiry(&self, old: Option<&CertificateSet>) {
        let gauge = &FAMILIES.tls_certificate_expiry;
        for e in old.into_iter().flat_map(|s| &s.entries) {
            let name = e.names.first().map(String::as_str).unwrap_or_default();
            let _ = gauge.remove_label_values(&[&self.listener, name]);
        }
        for e in &self.current.load().entries {
            let name = e.names.first().map(String::as_str).unwrap_or_default();
            gauge
                .with_label_values(&[&self.listener, name])
                .set(e.expires);
        }
    }

    /// Puts the certificates for `server_name` on a handshake.
    fn install(&self, ssl: &mut SslRef) {
        let set = self.current.load();
        let server_name = ssl
            .servername(NameType::HOST_NAME)
            .map(str::to_ascii_lowercase);
        for &i in set.select(server_name.as_deref()) {
            let entry = &set.entries[i];
            let mut chain = entry.chain.iter();
            let installed = chain.next().map_or(Ok(()), |leaf| {
                pingora::tls::ext::ssl_use_certificate(ssl, leaf)?;
                pingora::tls::ext::ssl_use_private_key(ssl, &entry.key)?;
                chain.try_for_each(|c| pingora::tls::ext::ssl_add_chain_cert(ssl, c))
            });
            if let Err(e) = installed {
                tracing::warn!(listener = %self.listener, "cannot use a certificate: {e}");
            }
        }
    }
}

/// Every TLS listener's certificates, for the reloads that reach them all
/// (SIGHUP, the admin API).
#[derive(Clone, Default)]
pub struct CertificateRegistry(Arc<Vec<Arc<ListenerCertificates>>>);

impl CertificateRegistry {
    pub fn new(listeners: Vec<Arc<ListenerCertificates>>) -> Self {
        Self(Arc::new(listeners))
    }

    /// Reloads every listener's certificates: from the files `listeners`
    /// names for it (a reloaded configuration), else from the files in
    /// use. A listener whose files fail keeps what it serves; the others
    /// take theirs. Returns the failures, one line each.
    pub fn reload(&self, listeners: Option<&[ListenerConfig]>) -> Result<(), Vec<String>> {
        let mut failures = Vec::new();
        for store in self.0.iter() {
            let files = listeners.and_then(|all| {
                all.iter()
                    .find(|l| l.name == store.listener)
                    .and_then(|l| l.tls.as_ref())
                    .map(|tls| tls.certificates.clone())
            });
            if let Err(e) = store.reload(files) {
                failures.push(format!("listener {}: {e}", store.listener));
            }
        }
        let result = if failures.is_empty() {
            "ok"
        } else {
            "rejected"
        };
        FAMILIES
            .tls_certificate_reloads
            .with_label_values(&[result])
            .inc();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }

    /// Every certificate served, listener by listener.
    pub fn describe(&self) -> Vec<CertificateInfo> {
        self.0.iter().flat_map(|s| s.describe()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Pingora's handshake hook: it asks for the certificate once the
/// ClientHello (and its SNI) has arrived.
pub struct SniSelector(pub Arc<ListenerCertificates>);

#[async_trait]
impl TlsAccept for SniSelector {
    async fn certificate_callback(&self, ssl: &mut SslRef) {
        self.0.install(ssl);
    }
}

impl CertificateSet {
    fn load(files: &[CertificateFiles]) -> Result<Self, CertificateError> {
        let entries = files.iter().map(load_one).collect::<Result<Vec<_>, _>>()?;
        let index = NameIndex::build(entries.iter().map(|e| e.names.as_slice()).collect());
        Ok(Self { entries, index })
    }

    fn select(&self, server_name: Option<&str>) -> &[usize] {
        self.index.select(server_name)
    }
}

impl NameIndex {
    /// `names[i]` are the names entry `i` serves.
    fn build(names: Vec<&[String]>) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, list) in names.iter().enumerate() {
            for name in *list {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_default().push(i),
                    None => exact.entry(name.clone()).or_default().push(i),
                }
            }
        }
        // The default is the first entry and any other entry for exactly
        // its names (its other key type).
        let default = names
            .iter()
            .enumerate()
            .filter(|(_, list)| Some(*list) == names.first())
            .map(|(i, _)| i)
            .collect();
        Self {
            exact,
            wildcard,
            default,
        }
    }

    fn select(&self, server_name: Option<&str>) -> &[usize] {
        let Some(name) = server_name else {
            return &self.default;
        };
        if let Some(found) = self.exact.get(name) {
            return found;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .map_or(&self.default, Vec::as_slice)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(path).map_err(|source| CertificateError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn load_one(files: &CertificateFiles) -> Result<Loaded, CertificateError> {
    fn pem<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(ErrorStack) -> CertificateError + 'a {
        move |source| CertificateError::Pem {
            path: path.to_path_buf(),
            what,
            source,
        }
    }
    let chain =
        X509::stack_from_pem(&read(&files.cert)?).map_err(pem("certificate", &files.cert))?;
    let key =
        PKey::private_key_from_pem(&read(&files.key)?).map_err(pem("private key", &files.key))?;
    let leaf = chain.first().ok_or_else(|| CertificateError::Empty {
        path: files.cert.clone(),
    })?;
    let matches = leaf
        .public_key()
        .map(|public| public.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err(CertificateError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        });
    }
    let names = if files.names.is_empty() {
        names_in(leaf)
    } else {
        files.names.iter().map(|n| n.to_ascii_lowercase()).collect()
    };
    if names.is_empty() {
        return Err(CertificateError::NoNames {
            path: files.cert.clone(),
        });
    }
    let expires = Asn1Time::from_unix(0)
        .and_then(|epoch| epoch.diff(leaf.not_after()))
        .map(|d| i64::from(d.days) * 86_400 + i64::from(d.secs))
        .map_err(pem("certificate", &files.cert))?;
    Ok(Loaded {
        chain,
        key,
        names,
        expires,
    })
}

/// The host names a certificate was issued for: its subjectAltName DNS
/// names, else its CN, as a `crt-list` line without filters serves them.
fn names_in(cert: &X509) -> Vec<String> {
    let sans: Vec<String> = cert
        .subject_alt_names()
        .into_iter()
        .flatten()
        .filter_map(|n| n.dnsname().map(str::to_ascii_lowercase))
        .collect();
    if !sans.is_empty() {
        return sans;
    }
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .filter_map(|e| e.data().to_string().ok().map(|s| s.to_ascii_lowercase()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(names: &[&[&str]]) -> NameIndex {
        let owned: Vec<Vec<String>> = names
            .iter()
            .map(|l| l.iter().map(|n| n.to_string()).collect())
            .collect();
        NameIndex::build(owned.iter().map(Vec::as_slice).collect())
    }

    #[test]
    fn exact_names_win_over_wildcards_and_the_default_takes_the_rest() {
        let s = index(&[
            &["default.test"],
            &["*.example.com"],
            &["api.example.com"],
            &["default.test"],
        ]);
        assert_eq!(s.select(Some("api.example.com")), &[2]);
        assert_eq!(s.select(Some("www.example.com")), &[1]);
        assert_eq!(s.select(Some("a.b.example.com")), &[0, 3], "one label deep");
        assert_eq!(s.select(Some("example.com")), &[0, 3]);
        assert_eq!(s.select(None), &[0, 3], "both key types of the default");
    }
}
