//! The operator dashboard, under `/ui/` on the admin listener: the same
//! origin as the admin API, so no CORS and no second process.
//!
//! - [`assets`]: the built front end (`dashboard/`), held in memory.
//! - [`session`]: the signed session cookie and its CSRF token.
//! - [`sign_in`]: the rate limit on failed sign-ins.
//!
//! The browser never holds the admin token: it signs in with
//! `DASHBOARD_PASSWORD` and calls `/ui/api/v1/…`, which this module answers
//! by calling the admin API in-process with the token and the signed-in
//! operator as the audit actor (`dashboard:NAME`). Reads need a session;
//! every mutation also needs the session's CSRF token and must not come
//! from another site.

mod assets;
mod session;
mod sign_in;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tower::ServiceExt;

use self::assets::Assets;
use self::session::{Session, Sessions, COOKIE};
use self::sign_in::SignInLimiter;
use super::error::ApiError;
use crate::config::DashboardSettings;
use crate::llm::LlmState;

/// The development default of `DASHBOARD_PASSWORD`, refused in production.
pub const DEV_PASSWORD: &str = "obleth";
/// The development default of `DASHBOARD_SESSION_SECRET`, refused in
/// production.
pub const DEV_SESSION_SECRET: &str = "dev-session-secret-change-in-production";
/// Shortest session secret production accepts.
pub const MIN_SESSION_SECRET: usize = 16;

/// Why the dashboard may not start as configured.
#[derive(Debug, thiserror::Error)]
pub enum DashboardRefused {
    #[error("DASHBOARD_PASSWORD is not set; set it, or set dashboard.enabled: false")]
    NoPassword,
    #[error("DASHBOARD_PASSWORD is the documented development default; change it")]
    DefaultPassword,
    #[error("DASHBOARD_SESSION_SECRET is not set; set it to a random string of at least {MIN_SESSION_SECRET} characters, or set dashboard.enabled: false")]
    NoSecret,
    #[error("DASHBOARD_SESSION_SECRET is the documented development default; change it")]
    DefaultSecret,
    #[error("DASHBOARD_SESSION_SECRET is shorter than {MIN_SESSION_SECRET} characters")]
    ShortSecret,
    #[error("cannot generate development credentials: {0}")]
    Random(String),
}

/// The dashboard's credentials and options, checked at start-up.
pub struct DashboardConfig {
    password: String,
    secret: Vec<u8>,
    ttl: Duration,
    secure_cookie: bool,
    assets: Option<std::path::PathBuf>,
}

impl DashboardConfig {
    /// Decides whether the dashboard runs and with which credentials. In
    /// development (the embedded default, which generates its admin token)
    /// missing credentials are generated and the password printed once; in
    /// production both secrets must be set and differ from the documented
    /// defaults. Unless `dashboard.enabled` says otherwise, production runs
    /// the dashboard only when a dashboard secret is set.
    pub fn resolve(
        settings: &DashboardSettings,
        development: bool,
    ) -> Result<Option<Self>, DashboardRefused> {
        // An empty variable (a Compose default) is an unset one.
        let set = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        let (password, secret) = (&set(&settings.password), &set(&settings.session_secret));
        let wanted = settings
            .enabled
            .unwrap_or(development || password.is_some() || secret.is_some());
        if !wanted {
            return Ok(None);
        }
        let random = |bytes: usize| {
            let mut buf = vec![0u8; bytes];
            openssl::rand::rand_bytes(&mut buf)
                .map(|()| hex::encode(buf))
                .map_err(|e| DashboardRefused::Random(e.to_string()))
        };
        let (password, secret) = if development {
            let password = match password {
                Some(p) => p.clone(),
                None => {
                    let p = random(12)?;
                    eprintln!("obleth: development dashboard password (shown once): {p}");
                    p
                }
            };
            let secret = match secret {
                Some(s) => s.clone(),
                None => random(32)?,
            };
            (password, secret)
        } else {
            let password = match password.as_deref() {
                None => return Err(DashboardRefused::NoPassword),
                Some(DEV_PASSWORD) => return Err(DashboardRefused::DefaultPassword),
                Some(p) => p.to_string(),
            };
            let secret = match secret.as_deref() {
                None => return Err(DashboardRefused::NoSecret),
                Some(DEV_SESSION_SECRET) => return Err(DashboardRefused::DefaultSecret),
                Some(s) if s.len() < MIN_SESSION_SECRET => {
                    return Err(DashboardRefused::ShortSecret)
                }
                Some(s) => s.to_string(),
            };
            (password, secret)
        };
        Ok(Some(Self {
            password,
            secret: secret.into_bytes(),
            ttl: settings.session_ttl,
            secure_cookie: settings.secure_cookie,
            assets: settings.assets.clone(),
        }))
    }
}

/// What the dashboard's handlers share.
#[derive(Clone)]
struct Dashboard {
    sessions: Sessions,
    password: Arc<String>,
    secure_cookie: bool,
    assets: Arc<Option<Assets>>,
    limiter: Arc<SignInLimiter>,
    /// The admin API, called with the admin token on the operator's behalf.
    api: Router,
    admin_token: Arc<String>,
    llm: Option<Arc<LlmState>>,
}

/// The `/ui` routes, calling `api` (the token-protected admin API) for
/// the pages' data.
pub fn router(
    config: DashboardConfig,
    api: Router,
    admin_token: &str,
    llm: Option<Arc<LlmState>>,
) -> Router {
    let dirs = match &config.assets {
        Some(dir) => vec![dir.clone()],
        None => Assets::default_dirs(),
    };
    let assets = dirs.iter().find_map(|d| Assets::load(d).ok());
    match &assets {
        Some(a) => tracing::info!(assets = %a.dir.display(), "dashboard on /ui/"),
        None => tracing::warn!(
            "the dashboard's front end is not built (looked in {}); /ui/ answers 503 until it is: run scripts/setup.sh",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
    let state = Dashboard {
        sessions: Sessions::new(&config.secret, config.ttl),
        password: Arc::new(config.password),
        secure_cookie: config.secure_cookie,
        assets: Arc::new(assets),
        limiter: Arc::default(),
        api,
        admin_token: Arc::new(admin_token.to_string()),
        llm,
    };
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(page))
        .route("/ui/{*path}", get(page))
        .route("/ui/login", post(sign_in))
        .route("/ui/logout", post(sign_out))
        .route("/ui/session", get(whoami))
        .route("/ui/metrics", get(metrics))
        .route("/ui/api/v1/{*rest}", any(call_api))
        .with_state(state)
}

/// Headers every dashboard answer carries: nothing loads from elsewhere,
/// nothing frames it.
fn harden(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

async fn page(State(d): State<Dashboard>, uri: Uri) -> Response {
    let path = uri.path().strip_prefix("/ui/").unwrap_or("");
    let path = if path.is_empty() { "index.html" } else { path };
    let Some(assets) = d.assets.as_ref() else {
        return harden(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the dashboard's front end is not built: run scripts/setup.sh\n",
            )
                .into_response(),
        );
    };
    let Some(asset) = assets.get(path) else {
        return harden((StatusCode::NOT_FOUND, "not found\n").into_response());
    };
    // Built files are named after their content; the page itself is not.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    harden(
        (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, cache),
            ],
            asset.bytes.clone(),
        )
            .into_response(),
    )
}

/// What the sign-in form sends.
#[derive(Deserialize)]
struct SignIn {
    password: String,
    /// Who signs in, for the audit log; `operator` when left empty.
    #[serde(default)]
    operator: String,
}

async fn sign_in(State(d): State<Dashboard>, req: Request) -> Response {
    let address = client_address(&req);
    if !same_site(req.headers()) {
        return cross_site().into_response();
    }
    if let Some(wait) = d.limiter.wait(address) {
        let mut answer = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed sign-ins; try again later",
        )
        .into_response();
        let secs = wait.as_secs().max(1).to_string();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            answer.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return answer;
    }
    let secure = d.secure_cookie || forwarded_https(req.headers());
    let body = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(_) => return ApiError::new(StatusCode::BAD_REQUEST, "unreadable body").into_response(),
    };
    let form: SignIn = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"password\", \"operator\"}}: {e}"),
            )
            .into_response()
        }
    };
    if !session::same(form.password.as_bytes(), d.password.as_bytes()) {
        d.limiter.failed(address);
        tracing::warn!(client = ?address, "a dashboard sign-in failed");
        return ApiError::new(StatusCode::UNAUTHORIZED, "wrong password").into_response();
    }
    let operator = operator_name(&form.operator);
    let Some((session, cookie)) = d.sessions.issue(&operator) else {
        return ApiError::unavailable("cannot sign a session").into_response();
    };
    tracing::info!(operator = %operator, "signed in to the dashboard");
    let set = format!(
        "{COOKIE}={cookie}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        d.sessions.ttl().as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut answer = Json(session_view(&d, &session)).into_response();
    if let Ok(v) = HeaderValue::from_str(&set) {
        answer.headers_mut().insert(header::SET_COOKIE, v);
    }
    answer
}

async fn sign_out(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize(&d, &Method::POST, &headers) {
        return refused.into_response();
    }
    let mut answer = StatusCode::NO_CONTENT.into_response();
    answer.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("obleth_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    answer
}

async fn whoami(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    match authorize(&d, &Method::GET, &headers) {
        Ok(session) => Json(session_view(&d, &session)).into_response(),
        Err(refused) => refused.into_response(),
    }
}

fn session_view(d: &Dashboard, session: &Session) -> serde_json::Value {
    serde_json::json!({
        "operator": session.operator,
        "expires": session.expires,
        "csrf": d.sessions.csrf(session),
        "llm_plane": d.llm.is_some(),
    })
}

async fn metrics(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize(&d, &Method::GET, &headers) {
        return refused.into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        super::metrics_text(d.llm.as_ref()),
    )
        .into_response()
}

/// `/ui/api/v1/REST` → the admin API's `/api/v1/REST`, as the operator.
async fn call_api(State(d): State<Dashboard>, req: Request) -> Response {
    let session = match authorize(&d, req.method(), req.headers()) {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().strip_prefix("/ui").unwrap_or("/api/v1/");
    let target = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut forwarded = Request::builder()
        .method(parts.method.clone())
        .uri(target)
        .body(Body::new(body))
        .unwrap_or_default();
    let h = forwarded.headers_mut();
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = parts.headers.get(&name) {
            h.insert(name, v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", d.admin_token)) {
        h.insert(header::AUTHORIZATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("dashboard:{}", session.operator)) {
        h.insert("x-obleth-actor", v);
    }
    match d.api.clone().oneshot(forwarded).await {
        Ok(answer) => answer,
        Err(never) => match never {},
    }
}

/// The session of a request, refusing it (401) without a valid one and,
/// for a mutation, (403) without its CSRF token or from another site.
fn authorize(d: &Dashboard, method: &Method, headers: &HeaderMap) -> Result<Session, ApiError> {
    let session = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .find_map(|v| d.sessions.verify(v));
    let Some(session) = session else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "sign in to the dashboard first",
        ));
    };
    let reads = matches!(*method, Method::GET | Method::HEAD);
    if !reads {
        if !same_site(headers) {
            return Err(cross_site());
        }
        let token = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !d.sessions.csrf_holds(&session, token) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token; reload the dashboard",
            ));
        }
    }
    Ok(session)
}

/// False for a request a browser says another site made: `Sec-Fetch-Site`
/// other than `same-origin`, or an `Origin` whose host is not this one.
fn same_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        if site != "same-origin" {
            return false;
        }
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            origin_host.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => false,
        (None, _) => true,
    }
}

fn cross_site() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "cross-site request refused: the dashboard only accepts changes from its own pages",
    )
}

fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn client_address(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}

/// The operator's name as the audit log shows it: printable, short, and
/// `operator` when none is given.
fn operator_name(given: &str) -> String {
    let name: String = given
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        .take(48)
        .collect();
    if name.is_empty() {
        "operator".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(password: Option<&str>, secret: Option<&str>) -> DashboardSettings {
        DashboardSettings {
            enabled: None,
            assets: None,
            session_ttl: Duration::from_secs(60),
            secure_cookie: false,
            password: password.map(str::to_string),
            session_secret: secret.map(str::to_string),
        }
    }

    #[test]
    fn production_refuses_missing_or_default_secrets_and_development_generates_them() {
        let strong = Some("a strong session secret, long enough");
        let refused = |p, s| DashboardConfig::resolve(&settings(p, s), false).err();
        assert!(matches!(
            refused(Some(DEV_PASSWORD), strong),
            Some(DashboardRefused::DefaultPassword)
        ));
        assert!(matches!(
            refused(None, strong),
            Some(DashboardRefused::NoPassword)
        ));
        assert!(matches!(
            refused(Some("pw-1"), Some(DEV_SESSION_SECRET)),
            Some(DashboardRefused::DefaultSecret)
        ));
        assert!(matches!(
            refused(Some("pw-1"), None),
            Some(DashboardRefused::NoSecret)
        ));
        assert!(matches!(
            refused(Some("pw-1"), Some("short")),
            Some(DashboardRefused::ShortSecret)
        ));
        let ok = DashboardConfig::resolve(&settings(Some("pw-1"), strong), false);
        assert!(matches!(ok, Ok(Some(_))));
        // Production without any dashboard secret runs without the dashboard.
        assert!(matches!(
            DashboardConfig::resolve(&settings(None, None), false),
            Ok(None)
        ));
        let dev = DashboardConfig::resolve(&settings(None, None), true);
        assert!(matches!(dev, Ok(Some(c)) if c.password.len() == 24 && c.secret.len() == 64));
    }

    #[test]
    fn a_request_from_another_site_is_told_apart() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_site(&headers(&[("host", "127.0.0.1:9090")])));
        assert!(same_site(&headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_site(&headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_site(&headers(&[
            ("host", "127.0.0.1:9090"),
            ("sec-fetch-site", "cross-site")
        ])));
    }
}
