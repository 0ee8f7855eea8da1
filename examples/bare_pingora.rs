//! The floor of the edge benchmark (`tests/bench/edge.sh`): Pingora's HTTP
//! proxy with nothing on top (one upstream, no routing, no headers added, no
//! metrics, no logs), built with obleth's allocator and server settings.
//! Whatever obleth spends per request beyond this binary is obleth's own.
//!
//! `cargo run --release --example bare_pingora -- LISTEN UPSTREAM`

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let upstream: SocketAddr = match upstream.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bare_pingora: upstream {upstream}: {e}");
            std::process::exit(2);
        }
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: true,
        // The harness stops it with SIGTERM: no drain to wait for.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut proxy = http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
