//! How the admin API fails: one JSON shape, `{"error":{"message","field"}}`,
//! for everything under `/api/v1` — validation and store errors, and the
//! rejections of the body, query and path extractors, unknown routes and
//! methods, which axum would otherwise answer in plain text or empty.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::store::StoreError;

/// An error answered as `{"error":{"message","field"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

/// The body of every admin API error.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong and, for validation errors and conflicts, which field of
/// the request caused it.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    message: String,
    field: Option<String>,
}

impl ApiError {
    /// An error with this status and message, naming no field.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// A 400 naming the offending field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        StoreError::invalid(field, message).into()
    }

    /// A 503: a dependency (the store, Redis, ClickHouse, the scheduler)
    /// cannot answer now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            StoreError::ConflictOn { field, message } => ApiError {
                status: StatusCode::CONFLICT,
                message: format!("{field}: {message}"),
                field: Some(field),
            },
            StoreError::Invalid { field, message } => ApiError {
                status: StatusCode::BAD_REQUEST,
                message: format!("{field}: {message}"),
                field: Some(field),
            },
            StoreError::Database(_) | StoreError::Crypto(_) => {
                tracing::error!("admin API: {e}");
                ApiError::unavailable("the store is unavailable")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                field: self.field,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// What every handler returns.
pub type ApiResult<T> = Result<T, ApiError>;

/// What a handler that answers with a JSON body returns.
pub type ApiJson<T> = ApiResult<Json<T>>;

/// A JSON request body. A body that is not `application/json` (or
/// `…+json`) is 415, one over the size limit 413, malformed JSON or a value
/// of the wrong shape 400 naming the field. Numbers with a zero fraction
/// (`3.0`) are the integers they equal, as in JSON Schema.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON (content-type: application/json)",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::new(r.status(), r.body_text()))?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
        decode(value).map(Body)
    }
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(essence) = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
    else {
        return false;
    };
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Deserializes `value` into `T` after turning integral numbers written
/// with a fraction into integers; a mismatch is a 400 naming the field.
pub fn decode<T: DeserializeOwned>(mut value: Value) -> ApiResult<T> {
    integral_numbers(&mut value);
    let bytes = serde_json::to_vec(&value)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    Json::<T>::from_bytes(&bytes)
        .map(|Json(v)| v)
        .map_err(|rejection| shape_error(&rejection.body_text()))
}

/// `3.0` → `3`, anywhere in `value` (within the range of 64-bit integers,
/// where every such float is an exact integer).
fn integral_numbers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) {
                if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                    *value = Value::from(f as u64);
                } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                    *value = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(fields) => fields.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// A deserialization error as a 400, with the field taken from the path
/// the message starts with (`weight: invalid type …`) or from a missing
/// field's name.
fn shape_error(text: &str) -> ApiError {
    let text = text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .unwrap_or(text);
    let path = text
        .split_once(": ")
        .map(|(path, _)| path.trim_end_matches('.'))
        .filter(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.[]".contains(c))
        });
    let missing = text
        .split_once("missing field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name);
    ApiError {
        status: StatusCode::BAD_REQUEST,
        message: text.to_string(),
        field: path.or(missing).map(str::to_string),
    }
}

/// Query parameters. Unknown or repeated parameters are a 400; the
/// handlers parse the values themselves so a bad one is named.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.body_text()))
    }
}

/// Path parameters, whose only rejection (a segment that does not decode
/// to UTF-8) is a 400.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.body_text()))
    }
}

/// An integer query parameter in `min..=max`, or 400 naming it.
pub fn int_param(field: &str, text: Option<&str>, min: i64, max: i64) -> ApiResult<Option<i64>> {
    let Some(text) = text else { return Ok(None) };
    match text.parse::<i64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(Some(v)),
        _ => Err(ApiError::invalid(
            field,
            format!("{text:?} is not an integer from {min} to {max}"),
        )),
    }
}

/// One of `allowed`, or 400 naming the parameter.
pub fn choice_param<'a>(
    field: &str,
    text: Option<&'a str>,
    allowed: &[&str],
) -> ApiResult<Option<&'a str>> {
    match text {
        Some(t) if !allowed.contains(&t) => Err(ApiError::invalid(
            field,
            format!("must be one of {}", allowed.join(", ")),
        )),
        other => Ok(other),
    }
}

/// Unknown routes under `/api/v1`.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route in the admin API")
}

/// Gives axum's bodiless 405 (which keeps its `Allow` header) the JSON
/// error body.
pub async fn json_method_not_allowed(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let message = match allow.as_ref().and_then(|v| v.to_str().ok()) {
        Some(methods) => format!("method not allowed here; allowed: {methods}"),
        None => "method not allowed here".to_string(),
    };
    let mut json = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, message).into_response();
    if let Some(allow) = allow {
        json.headers_mut().insert(header::ALLOW, allow);
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_floats_become_integers_and_others_stay() {
        let mut v = serde_json::json!({ "a": 3.0, "b": [1.5, -2.0], "c": 1e300, "d": "4.0" });
        integral_numbers(&mut v);
        assert_eq!(
            v,
            serde_json::json!({ "a": 3, "b": [1.5, -2], "c": 1e300, "d": "4.0" })
        );
    }

    #[test]
    fn shape_errors_name_the_field() {
        let e = shape_error("Failed to deserialize the JSON body into the target type: weight: invalid type: floating point `3.5`, expected u32 at line 1 column 10");
        assert_eq!(e.field.as_deref(), Some("weight"));
        let e = shape_error("missing field `name` at line 1 column 2");
        assert_eq!(e.field.as_deref(), Some("name"));
    }
}
