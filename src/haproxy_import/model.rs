//! The obleth configuration the import produces, in the keys of
//! `conf/README.md`, and its rendering as a YAML tree.

use super::acl::{HeaderTest, PathTest};
use super::yaml::{one_or_many, s, strings, Entry, Item, MapBuilder, Node};

#[derive(Debug, Default)]
pub struct Output {
    pub threads: Option<u64>,
    pub grace: Option<String>,
    pub listeners: Vec<Listener>,
    pub admin: Option<String>,
    pub metrics: Option<String>,
    pub access_log_httplog: bool,
    pub pools: Vec<Pool>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: String,
    pub tls: Option<Tls>,
    pub h2c: bool,
    pub http_request: Option<String>,
    pub http_keep_alive: Option<String>,
    pub client: Option<String>,
    pub max_head_bytes: Option<u64>,
    /// `proxy_protocol.trusted`.
    pub proxy_protocol: Option<Vec<String>>,
    /// The `bind` line it comes from.
    pub line: usize,
    pub comment: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Tls {
    /// `tls: { cert, key }`.
    One { cert: String, key: String },
    /// `tls: { certificates: [...] }`, the first the default.
    Many(Vec<Certificate>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Certificate {
    pub cert: String,
    pub key: String,
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub algorithm: &'static str,
    pub hash_key: Option<String>,
    pub servers: Vec<Server>,
    pub tls: Option<UpstreamTls>,
    pub health_check: Option<HealthCheck>,
    pub connect: Option<String>,
    pub read: Option<String>,
    pub write: Option<String>,
    pub retries: Option<u64>,
    pub host_header: Option<String>,
    pub comment: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub address: String,
    pub weight: Option<u64>,
    pub max_connections: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamTls {
    pub sni: Option<String>,
    pub verify: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// A TCP check (connect only); else an HTTP check of `path`.
    pub tcp: bool,
    pub path: Option<String>,
    pub expect_status: Option<u64>,
    pub interval: String,
    pub timeout: String,
    pub rise: u64,
    pub fall: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Matcher {
    pub hosts: Vec<String>,
    pub path: Option<PathTest>,
    pub methods: Vec<String>,
    pub headers: Vec<(String, HeaderTest)>,
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderEdits {
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderEdits {
    /// Applies `set-header NAME VALUE` after the edits so far.
    pub fn set(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        self.remove.retain(|n| *n != name);
        self.set.retain(|(n, _)| *n != name);
        self.set.push((name, value.to_string()));
    }

    /// Applies `del-header NAME` after the edits so far.
    pub fn remove(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.set.retain(|(n, _)| *n != name);
        if !self.remove.contains(&name) {
            self.remove.push(name);
        }
    }

    /// These edits followed by `later`.
    pub fn then(&self, later: &HeaderEdits) -> HeaderEdits {
        let mut out = self.clone();
        for n in &later.remove {
            out.remove(n);
        }
        for (n, v) in &later.set {
            out.set(n, v);
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Proxy {
        pool: String,
        request_headers: HeaderEdits,
        response_headers: HeaderEdits,
    },
    Redirect {
        status: u16,
        location: String,
    },
    Respond {
        status: u16,
        content_type: Option<String>,
        body: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub matcher: Matcher,
    pub action: Action,
    pub comment: Vec<String>,
}

impl Output {
    /// The top-level entries of the YAML document.
    pub fn entries(&self) -> Vec<Entry> {
        let mut root = Vec::new();
        let mut put = |key: &str, value: Node| {
            root.push(Entry {
                key: key.into(),
                value,
                comment: Vec::new(),
            })
        };
        let server = MapBuilder::new()
            .put_opt("threads", self.threads.map(Node::Int))
            .put_opt("grace", self.grace.clone().map(s))
            .build();
        if !matches!(&server, Node::Map(m) if m.is_empty()) {
            put("server", server);
        }
        put(
            "listeners",
            Node::List(self.listeners.iter().map(Listener::item).collect()),
        );
        if let Some(a) = &self.admin {
            put(
                "admin",
                MapBuilder::new().put("address", s(a.clone())).build(),
            );
        }
        if let Some(m) = &self.metrics {
            put(
                "metrics",
                MapBuilder::new().put("address", s(m.clone())).build(),
            );
        }
        if self.access_log_httplog {
            put(
                "access_log",
                MapBuilder::new().put("format", s("httplog")).build(),
            );
        }
        if !self.pools.is_empty() {
            put(
                "pools",
                Node::List(self.pools.iter().map(Pool::item).collect()),
            );
        }
        if !self.routes.is_empty() {
            put(
                "routes",
                Node::List(self.routes.iter().map(Route::item).collect()),
            );
        }
        root
    }
}

impl Listener {
    fn item(&self) -> Item {
        let tls = self.tls.as_ref().map(|t| match t {
            Tls::One { cert, key } => MapBuilder::new()
                .put("cert", s(cert.clone()))
                .put("key", s(key.clone()))
                .build(),
            Tls::Many(list) => MapBuilder::new()
                .put(
                    "certificates",
                    Node::List(
                        list.iter()
                            .map(|c| Item {
                                value: MapBuilder::new()
                                    .put("cert", s(c.cert.clone()))
                                    .put("key", s(c.key.clone()))
                                    .put("names", strings(c.names.iter().cloned()))
                                    .build(),
                                comment: Vec::new(),
                            })
                            .collect(),
                    ),
                )
                .build(),
        });
        let timeouts = MapBuilder::new()
            .put_opt("http_request", self.http_request.clone().map(s))
            .put_opt("http_keep_alive", self.http_keep_alive.clone().map(s))
            .put_opt("client", self.client.clone().map(s))
            .build();
        let value = MapBuilder::new()
            .put("name", s(self.name.clone()))
            .put("address", s(self.address.clone()))
            .put_opt("tls", tls)
            .put_opt("h2c", self.h2c.then_some(Node::Bool(true)))
            .put_opt(
                "proxy_protocol",
                self.proxy_protocol.as_ref().map(|t| {
                    MapBuilder::new()
                        .put("trusted", strings(t.iter().cloned()))
                        .build()
                }),
            )
            .put_nonempty("timeouts", timeouts)
            .put_opt("max_head_bytes", self.max_head_bytes.map(Node::Int))
            .build();
        Item {
            value,
            comment: self.comment.clone(),
        }
    }
}

impl Pool {
    fn item(&self) -> Item {
        let servers = Node::List(
            self.servers
                .iter()
                .map(|srv| Item {
                    value: MapBuilder::new()
                        .put("address", s(srv.address.clone()))
                        .put_opt("weight", srv.weight.map(Node::Int))
                        .put_opt("max_connections", srv.max_connections.map(Node::Int))
                        .build(),
                    comment: Vec::new(),
                })
                .collect(),
        );
        let tls = self.tls.as_ref().map(|t| {
            MapBuilder::new()
                .put_opt("sni", t.sni.clone().map(s))
                .put_opt("verify", t.verify.map(Node::Bool))
                .build()
        });
        let health_check = self.health_check.as_ref().map(|h| {
            MapBuilder::new()
                .put_opt("kind", h.tcp.then(|| s("tcp")))
                .put_opt("path", h.path.clone().map(s))
                .put_opt("expect_status", h.expect_status.map(Node::Int))
                .put("interval", s(h.interval.clone()))
                .put("timeout", s(h.timeout.clone()))
                .put("rise", Node::Int(h.rise))
                .put("fall", Node::Int(h.fall))
                .build()
        });
        let timeouts = MapBuilder::new()
            .put_opt("connect", self.connect.clone().map(s))
            .put_opt("read", self.read.clone().map(s))
            .put_opt("write", self.write.clone().map(s))
            .build();
        let value = MapBuilder::new()
            .put("name", s(self.name.clone()))
            .put("algorithm", s(self.algorithm))
            .put_opt("hash_key", self.hash_key.clone().map(s))
            .put("servers", servers)
            .put_opt("tls", tls)
            .put_opt("health_check", health_check)
            .put_nonempty("timeouts", timeouts)
            .put_opt("retries", self.retries.map(Node::Int))
            .put_opt("host_header", self.host_header.clone().map(s))
            .build();
        Item {
            value,
            comment: self.comment.clone(),
        }
    }
}

impl Matcher {
    pub fn is_empty(&self) -> bool {
        *self == Matcher::default()
    }

    fn node(&self) -> Node {
        let path = self.path.as_ref().map(|p| {
            let (k, v) = match p {
                PathTest::Prefix(v) => ("prefix", v),
                PathTest::Exact(v) => ("exact", v),
                PathTest::Regex(v) => ("regex", v),
            };
            MapBuilder::new().put(k, s(v.clone())).build()
        });
        let headers = Node::List(
            self.headers
                .iter()
                .map(|(name, test)| {
                    let b = MapBuilder::new().put("name", s(name.clone()));
                    let b = match test {
                        HeaderTest::Present => b.put("present", Node::Bool(true)),
                        HeaderTest::Absent => b.put("present", Node::Bool(false)),
                        HeaderTest::Equals(v) => b.put("equals", s(v.clone())),
                        HeaderTest::Regex(v) => b.put("regex", s(v.clone())),
                    };
                    Item {
                        value: b.build(),
                        comment: Vec::new(),
                    }
                })
                .collect(),
        );
        MapBuilder::new()
            .put_opt(
                "host",
                (!self.hosts.is_empty()).then(|| one_or_many(&self.hosts)),
            )
            .put_opt("path", path)
            .put_opt(
                "method",
                (!self.methods.is_empty()).then(|| one_or_many(&self.methods)),
            )
            .put_nonempty("headers", headers)
            .put_opt(
                "source",
                (!self.sources.is_empty()).then(|| one_or_many(&self.sources)),
            )
            .build()
    }
}

fn edits(e: &HeaderEdits) -> Node {
    let set = Node::Map(
        e.set
            .iter()
            .map(|(n, v)| Entry {
                key: n.clone(),
                value: s(v.clone()),
                comment: Vec::new(),
            })
            .collect(),
    );
    MapBuilder::new()
        .put_nonempty("set", set)
        .put_nonempty("remove", strings(e.remove.iter().cloned()))
        .build()
}

impl Route {
    fn item(&self) -> Item {
        let action = match &self.action {
            Action::Proxy {
                pool,
                request_headers,
                response_headers,
            } => (
                "proxy",
                MapBuilder::new()
                    .put("pool", s(pool.clone()))
                    .put_nonempty("request_headers", edits(request_headers))
                    .put_nonempty("response_headers", edits(response_headers))
                    .build(),
            ),
            Action::Redirect { status, location } => (
                "redirect",
                MapBuilder::new()
                    .put("status", Node::Int(u64::from(*status)))
                    .put("location", s(location.clone()))
                    .build(),
            ),
            Action::Respond {
                status,
                content_type,
                body,
            } => (
                "respond",
                MapBuilder::new()
                    .put("status", Node::Int(u64::from(*status)))
                    .put_opt("content_type", content_type.clone().map(s))
                    .put_opt("body", (!body.is_empty()).then(|| s(body.clone())))
                    .build(),
            ),
        };
        let value = MapBuilder::new()
            .put("name", s(self.name.clone()))
            .put_opt(
                "match",
                (!self.matcher.is_empty()).then(|| self.matcher.node()),
            )
            .put(action.0, action.1)
            .build();
        Item {
            value,
            comment: self.comment.clone(),
        }
    }
}
