//! `bind` lines → listeners: addresses, TLS certificates (with their keys
//! and the names they serve), the PROXY protocol and client timeouts.

use crate::config::valid_server_name;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::model::{Certificate, Listener, Tls};
use super::parse::{Line, SectionKind};
use super::translate::{duration, opt_text, options, Context, Global, Proxy};
use super::Notes;

/// Options of `bind` that take an argument.
pub(super) const BIND_ARGS: &[&str] = &[
    "accept-netscaler-cip",
    "alpn",
    "backlog",
    "ca-file",
    "ca-ignore-err",
    "ca-sign-file",
    "ca-sign-pass",
    "ciphers",
    "ciphersuites",
    "crl-file",
    "crt",
    "crt-ignore-err",
    "crt-list",
    "curves",
    "ecdhe",
    "expose-fd",
    "gid",
    "group",
    "id",
    "interface",
    "label",
    "level",
    "maxconn",
    "mode",
    "mss",
    "name",
    "namespace",
    "nice",
    "npn",
    "process",
    "proto",
    "quic-cc-algo",
    "quic-socket",
    "severity-output",
    "shards",
    "sigalgs",
    "client-sigalgs",
    "ssl-max-ver",
    "ssl-min-ver",
    "tcp-ut",
    "thread",
    "uid",
    "user",
    "verify",
    "default-crt",
    "guid-prefix",
    "idle-ping",
];

pub(super) fn build_listeners(
    p: &Proxy,
    g: &Global,
    ctx: &Context<'_>,
    notes: &mut Notes,
) -> Vec<Listener> {
    let s = &p.s;
    let client = s.timeout("client").filter(|t| *t > 0);
    let http_request = s.timeout("http-request").filter(|t| *t > 0).or(client);
    let keep_alive = s
        .timeout("http-keep-alive")
        .filter(|t| *t > 0)
        .or(http_request);
    for (name, (us, line)) in &s.timeouts {
        let text = format!("timeout {name} {}", duration(*us));
        if *us == 0 && ["client", "http-request", "http-keep-alive"].contains(&name.as_str()) {
            notes.approximated(
                *line,
                &text,
                "0 means no timeout in HAProxy; obleth needs one and keeps its default",
            );
        }
        if name == "client-fin" {
            notes.skipped(*line, &text, "obleth has no such timeout");
        }
    }
    let mut addresses: Vec<Bound> = Vec::new();
    for line in &p.binds {
        let (n, t) = (line.number, line.text());
        let spec = line.word(1);
        let mut ssl = false;
        let mut crts: Vec<String> = Vec::new();
        let mut crt_lists: Vec<String> = Vec::new();
        let mut h2c = false;
        let mut proxy = false;
        for (word, arg) in options(line.words.get(2..).unwrap_or(&[]), BIND_ARGS) {
            let d = format!("bind {spec} {}", opt_text(word, arg));
            match (word, arg) {
                ("ssl", _) => ssl = true,
                ("crt", Some(c)) => crts.push(c.to_string()),
                ("crt-list", Some(c)) => crt_lists.push(c.to_string()),
                ("alpn", Some(a)) => {
                    if !a.split(',').all(|p| p == "h2" || p == "http/1.1") {
                        notes.approximated(n, &d, "obleth's TLS listeners offer h2 and http/1.1 by ALPN");
                    }
                }
                ("proto", Some("h2")) => {
                    h2c = true;
                    notes.approximated(n, &d, "obleth's h2c listener also takes HTTP/1.1");
                }
                ("accept-proxy", _) => proxy = true,
                ("ssl-min-ver" | "ssl-max-ver" | "ciphers" | "ciphersuites" | "curves" | "ecdhe" | "no-sslv3" | "no-tlsv10" | "no-tlsv11"
                | "no-tlsv12" | "no-tlsv13" | "force-tlsv12" | "force-tlsv13" | "no-tls-tickets" | "prefer-client-ciphers"
                | "allow-0rtt" | "sigalgs" | "client-sigalgs", _) => {
                    notes.not_needed(n, &d, "obleth's TLS listeners use the Mozilla \"intermediate\" profile")
                }
                ("strict-sni", _) => notes.skipped(n, &d, "obleth answers a handshake without a matching name with the default certificate"),
                ("ca-file" | "verify" | "crl-file" | "ca-ignore-err" | "crt-ignore-err", _) => {
                    notes.skipped(n, &d, "obleth does not ask clients for certificates")
                }
                ("v4v6" | "v6only", _) => notes.approximated(n, &d, "obleth binds the address as the system does by default (dual-stack for [::] on Linux)"),
                ("name" | "id" | "process" | "thread" | "nice" | "backlog" | "maxconn" | "defer-accept" | "tfo" | "mss" | "interface"
                | "transparent" | "shards" | "label", _) => notes.not_needed(n, &d, "obleth has no such listener setting"),
                _ => notes.skipped(n, &d, "obleth has no such listener setting"),
            }
        }
        let addrs = match bind_addresses(spec) {
            Ok(a) => a,
            Err(why) => {
                notes.skipped(n, &t, why);
                continue;
            }
        };
        let tls = if ssl {
            let list = certificates(&crts, &crt_lists, g, line, notes);
            match list.len() {
                0 => {
                    notes.skipped(
                        n,
                        &t,
                        "ssl without a certificate: HAProxy refuses this bind",
                    );
                    continue;
                }
                1 => list.into_iter().next().map(|c| Tls::One {
                    cert: c.cert,
                    key: c.key,
                }),
                _ => Some(Tls::Many(list)),
            }
        } else {
            if !crts.is_empty() || !crt_lists.is_empty() {
                notes.skipped(
                    n,
                    &t,
                    "crt without ssl: HAProxy serves plain HTTP here, so does obleth",
                );
            }
            None
        };
        let trusted = if proxy {
            notes.approximated(
                n,
                &t,
                "accept-proxy becomes proxy_protocol trusting every address (0.0.0.0/0, ::/0): narrow `trusted` to your load balancers' addresses",
            );
            Some(vec!["0.0.0.0/0".to_string(), "::/0".to_string()])
        } else {
            None
        };
        for a in addrs {
            addresses.push(Bound {
                address: a,
                line: line.clone(),
                tls: tls.clone(),
                h2c,
                proxy_protocol: trusted.clone(),
            });
        }
    }
    let single = addresses.len() == 1;
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for Bound {
        address,
        line,
        tls,
        h2c,
        proxy_protocol,
    } in addresses
    {
        if !seen.insert(address.clone()) {
            notes.skipped(
                line.number,
                &line.text(),
                format!("{address} is bound already"),
            );
            continue;
        }
        let port = address.rsplit_once(':').map_or("", |(_, p)| p).to_string();
        let mut name = if single {
            p.name.clone()
        } else {
            format!("{}-{port}", p.name)
        };
        let mut i = 2;
        while !names.insert(name.clone()) {
            name = format!("{}-{port}-{i}", p.name);
            i += 1;
        }
        out.push(Listener {
            name,
            address,
            tls,
            h2c,
            http_request: http_request.map(duration),
            http_keep_alive: keep_alive.map(duration),
            client: client.map(duration),
            max_head_bytes: g.bufsize.map(|b| b.0),
            proxy_protocol,
            line: line.number,
            comment: vec![ctx.at(&line)],
        });
    }
    if out.is_empty() && p.kind == SectionKind::Frontend {
        notes.approximated(
            p.header.number,
            &p.header.text(),
            "no address obleth can listen on: this frontend gets no listener",
        );
    }
    out
}

/// One address of a `bind` line and what it serves.
struct Bound {
    address: String,
    line: Line,
    tls: Option<Tls>,
    h2c: bool,
    proxy_protocol: Option<Vec<String>>,
}

/// `bind` addresses (comma-separated) → `host:port` as obleth takes them.
pub(super) fn bind_addresses(spec: &str) -> Result<Vec<String>, String> {
    spec.split(',')
        .map(|a| {
            let a = a
                .strip_prefix("ipv4@")
                .or_else(|| a.strip_prefix("ipv6@"))
                .unwrap_or(a);
            if a.starts_with('/') || a.contains('@') {
                return Err("not a TCP address: obleth listens on TCP only".to_string());
            }
            let (host, port) = a
                .rsplit_once(':')
                .ok_or_else(|| format!("{a:?} has no port"))?;
            if port.contains('-') {
                return Err("port ranges are not supported: bind each port".into());
            }
            port.parse::<u16>()
                .map_err(|_| format!("{port:?} is not a port"))?;
            let host = match host {
                "" | "*" => "0.0.0.0".to_string(),
                "::" | "[::]" => "[::]".to_string(),
                h if h.starts_with('[') => h.to_string(),
                h if h.contains(':') => format!("[{h}]"),
                h => h.to_string(),
            };
            Ok(format!("{host}:{port}"))
        })
        .collect()
}

/// The certificates of one `bind`: each `crt` (a file, or every
/// certificate file of a directory) and each `crt-list` line.
pub(super) fn certificates(
    crts: &[String],
    crt_lists: &[String],
    g: &Global,
    line: &Line,
    notes: &mut Notes,
) -> Vec<Certificate> {
    let resolve = |path: &str| -> String {
        match &g.crt_base {
            Some(base) if !Path::new(path).is_absolute() => {
                PathBuf::from(base).join(path).display().to_string()
            }
            _ => path.to_string(),
        }
    };
    let mut out = Vec::new();
    for crt in crts {
        let path = resolve(crt);
        if Path::new(&path).is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            files.sort();
            for f in files {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let extra = [".key", ".ocsp", ".issuer", ".sctl", ".dh"]
                    .iter()
                    .any(|e| name.ends_with(e));
                if f.is_file() && !name.starts_with('.') && !extra {
                    out.push(certificate(
                        &f.display().to_string(),
                        Vec::new(),
                        line,
                        notes,
                    ));
                }
            }
        } else {
            out.push(certificate(&path, Vec::new(), line, notes));
        }
    }
    for list in crt_lists {
        let path = resolve(list);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for entry in text
                    .lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim())
                    .filter(|l| !l.is_empty())
                {
                    let mut words = entry.split_whitespace();
                    let Some(file) = words.next() else { continue };
                    let mut names = Vec::new();
                    let mut in_options = false;
                    for w in words {
                        if w.starts_with('[') {
                            in_options = true;
                        }
                        if !in_options && !w.starts_with('!') {
                            if valid_server_name(w) {
                                names.push(w.to_ascii_lowercase());
                            } else {
                                notes.skipped(
                                    line.number,
                                    &line.text(),
                                    format!("{w:?} in {path} is not a host name obleth can select a certificate by"),
                                );
                            }
                        }
                        if w.ends_with(']') {
                            in_options = false;
                        }
                    }
                    out.push(certificate(&resolve(file), names, line, notes));
                }
            }
            Err(e) => notes.skipped(
                line.number,
                &line.text(),
                format!("cannot read crt-list {path}: {e}"),
            ),
        }
    }
    out
}

/// One certificate file: its key (in the same file, or `NAME.key`) and the
/// names it is for (given, else its DNS names).
pub(super) fn certificate(
    path: &str,
    names: Vec<String>,
    line: &Line,
    notes: &mut Notes,
) -> Certificate {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            notes.approximated(
                line.number,
                &line.text(),
                format!("cannot read {path} here ({e}): cert and key both point at it, as HAProxy keeps them in one file"),
            );
            return Certificate {
                cert: path.to_string(),
                key: path.to_string(),
                names,
            };
        }
    };
    let has_key = String::from_utf8_lossy(&text).contains("PRIVATE KEY-----");
    let key = if has_key {
        path.to_string()
    } else {
        let stem = path
            .strip_suffix(".pem")
            .or_else(|| path.strip_suffix(".crt"));
        let candidates: Vec<String> = std::iter::once(format!("{path}.key"))
            .chain(stem.map(|s| format!("{s}.key")))
            .collect();
        match candidates.iter().find(|c| Path::new(c).is_file()) {
            Some(k) => k.clone(),
            None => {
                notes.skipped(
                    line.number,
                    &line.text(),
                    format!(
                        "no private key in {path} nor next to it ({})",
                        candidates.join(", ")
                    ),
                );
                path.to_string()
            }
        }
    };
    let names = if names.is_empty() {
        certificate_names(&text)
    } else {
        names
    };
    Certificate {
        cert: path.to_string(),
        key,
        names,
    }
}

/// The DNS names of a PEM certificate (its subjectAltName, else its CN).
pub(super) fn certificate_names(pem: &[u8]) -> Vec<String> {
    let Ok(cert) = openssl::x509::X509::from_pem(pem) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.dnsname().map(|d| d.to_ascii_lowercase()))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names = cert
            .subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .filter_map(|e| e.data().to_string().ok().map(|s| s.to_ascii_lowercase()))
            .collect();
    }
    names.retain(|n| valid_server_name(n));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_are_written_as_obleth_takes_them() {
        assert_eq!(
            bind_addresses(":80").ok(),
            Some(vec!["0.0.0.0:80".to_string()])
        );
        assert_eq!(
            bind_addresses("*:80,127.0.0.1:81").ok(),
            Some(vec!["0.0.0.0:80".to_string(), "127.0.0.1:81".to_string()])
        );
        assert_eq!(
            bind_addresses(":::443").ok(),
            Some(vec!["[::]:443".to_string()])
        );
        assert_eq!(
            bind_addresses("ipv6@[::1]:80").ok(),
            Some(vec!["[::1]:80".to_string()])
        );
        assert!(bind_addresses("/run/h.sock").is_err());
        assert!(bind_addresses(":8000-8010").is_err());
    }

    /// A self-signed certificate for `names` (the first also its CN) and
    /// its key, as PEM.
    fn self_signed(names: &[&str]) -> (Vec<u8>, Vec<u8>) {
        use openssl::{asn1::Asn1Time, ec, hash::MessageDigest, nid::Nid, pkey::PKey, x509};
        let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
        let key = PKey::from_ec_key(ec::EcKey::generate(&group).expect("key")).expect("pkey");
        let mut name = x509::X509NameBuilder::new().expect("name");
        name.append_entry_by_nid(Nid::COMMONNAME, names[0])
            .expect("cn");
        let name = name.build();
        let mut b = x509::X509Builder::new().expect("builder");
        b.set_subject_name(&name).expect("subject");
        b.set_issuer_name(&name).expect("issuer");
        b.set_pubkey(&key).expect("pubkey");
        b.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
            .expect("nb");
        b.set_not_after(&Asn1Time::days_from_now(2).expect("time"))
            .expect("na");
        let mut san = x509::extension::SubjectAlternativeName::new();
        for n in names {
            san.dns(n);
        }
        let san = san.build(&b.x509v3_context(None, None)).expect("san");
        b.append_extension(san).expect("ext");
        b.sign(&key, MessageDigest::sha256()).expect("sign");
        (
            b.build().to_pem().expect("pem"),
            key.private_key_to_pem_pkcs8().expect("key pem"),
        )
    }

    #[test]
    fn certificates_come_with_their_keys_and_names() {
        let dir = std::env::temp_dir().join(format!("obleth-import-certs-{}", std::process::id()));
        let sites = dir.join("sites");
        std::fs::create_dir_all(&sites).expect("dir");
        // One file with both, as HAProxy keeps them.
        let (cert, key) = self_signed(&["a.example.com", "*.a.example.com"]);
        std::fs::write(sites.join("a.pem"), [cert, key].concat()).expect("write");
        // The key beside the certificate, as `b.pem.key`; and in `c.key`.
        let (cert, key) = self_signed(&["b.example.com"]);
        std::fs::write(sites.join("b.pem"), cert).expect("write");
        std::fs::write(sites.join("b.pem.key"), key).expect("write");
        let (cert, key) = self_signed(&["My Company"]);
        std::fs::write(dir.join("c.crt"), cert).expect("write");
        std::fs::write(dir.join("c.key"), key).expect("write");
        std::fs::write(
            dir.join("list"),
            "c.crt [alpn h2] shop.example.com !old.example.com\n# a comment\n",
        )
        .expect("write");
        let g = Global {
            crt_base: Some(dir.display().to_string()),
            ..Global::default()
        };
        let line = Line {
            number: 3,
            words: vec!["bind".into()],
        };
        let mut notes = Notes::default();
        let list = certificates(&["sites".into()], &["list".into()], &g, &line, &mut notes);
        let d = |f: &str| dir.join(f).display().to_string();
        assert_eq!(
            list,
            [
                Certificate {
                    cert: d("sites/a.pem"),
                    key: d("sites/a.pem"),
                    names: vec!["a.example.com".into(), "*.a.example.com".into()]
                },
                Certificate {
                    cert: d("sites/b.pem"),
                    key: d("sites/b.pem.key"),
                    names: vec!["b.example.com".into()]
                },
                Certificate {
                    cert: d("c.crt"),
                    key: d("c.key"),
                    names: vec!["shop.example.com".into()]
                },
            ]
        );
        assert!(notes.list().is_empty(), "{:?}", notes.list());
        // A certificate named only by a CN that is no host name has no names.
        let only_cn = certificate(&d("c.crt"), Vec::new(), &line, &mut notes);
        assert!(only_cn.names.is_empty(), "{only_cn:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
