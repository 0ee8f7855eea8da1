//! `/api/v1/certificates`: what each TLS listener serves, and a reload that
//! reads the certificate files again — what SIGHUP does for certificates,
//! for an operator (or a cert-manager hook) without a shell on the host.
//! New handshakes use the new certificates; open connections are untouched.
//!
//! Served with or without the LLM plane. A reload is audited when a store
//! runs and logged either way, as pool changes are.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::actor;
use super::error::{ApiError, ApiJson, ErrorBody};
use crate::edge::certificates::{CertificateInfo, CertificateRegistry};
use crate::llm::LlmState;

/// What the certificate handlers share.
#[derive(Clone)]
pub(super) struct CertificatesState {
    pub(super) registry: CertificateRegistry,
    pub(super) llm: Option<Arc<LlmState>>,
}

/// The routes of this file, for [`super::api::router`].
pub(super) fn routes() -> OpenApiRouter<CertificatesState> {
    OpenApiRouter::new()
        .routes(routes!(list_certificates))
        .routes(routes!(reload_certificates))
}

/// Every certificate the TLS listeners serve, with the names it is chosen
/// for and when it expires.
#[utoipa::path(get, path = "/api/v1/certificates", tag = "certificates",
    responses((status = 200, body = Vec<CertificateInfo>)))]
async fn list_certificates(State(s): State<CertificatesState>) -> Json<Vec<CertificateInfo>> {
    Json(s.registry.describe())
}

/// Reads every TLS listener's certificate files again and serves them to
/// new handshakes. A listener whose files do not load keeps what it
/// serves, and the answer is 422 naming it.
#[utoipa::path(post, path = "/api/v1/certificates/reload", tag = "certificates",
    responses((status = 200, body = Vec<CertificateInfo>), (status = 422, body = ErrorBody)))]
async fn reload_certificates(
    State(s): State<CertificatesState>,
    headers: HeaderMap,
) -> ApiJson<Vec<CertificateInfo>> {
    let actor = actor(&headers);
    let outcome = s.registry.reload(None);
    let detail = json!({
        "result": if outcome.is_ok() { "ok" } else { "rejected" },
        "failures": outcome.as_ref().err(),
    });
    if let Some(llm) = &s.llm {
        llm.store
            .record(&actor, "certificates.reload", "certificates", "*", &detail)
            .await?;
    }
    tracing::info!(actor = %actor, detail = %detail, "certificates reloaded through the admin API");
    match outcome {
        Ok(()) => Ok(Json(s.registry.describe())),
        Err(failures) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("kept the certificates in use for: {}", failures.join("; ")),
        )),
    }
}
