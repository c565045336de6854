//! Extractors whose rejections are [`ApiError`]s, so a malformed body, query
//! string or path answers with the api's JSON error body naming the field,
//! instead of axum's plain-text rejections.
//!
//! Use them exactly like axum's own:
//!
//! ```ignore
//! async fn create(ApiPath(key): ApiPath<String>, ApiQuery(page): ApiQuery<Page>, ApiJson(body): ApiJson<NewThing>) { … }
//! ```
//!
//! Deserialization goes through `serde_path_to_error`, so the reported field is
//! the full path inside the document (`arms[1].weight`), and for missing or
//! unknown fields (which serde reports at the enclosing object) the path is
//! completed with the field's name.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ApiError;

/// A JSON request body (or response). Rejections: 415 without a JSON content
/// type, 413 beyond `DefaultBodyLimit` (config `max_body_bytes`), 400 for
/// malformed JSON (`field: "body"`) or a document that does not fit `T`
/// (`field` = path of the offending value).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body is larger than the allowed size".into())
            } else {
                ApiError::BadRequest {
                    code: "invalid_body",
                    message: rejection.body_text(),
                    field: Some("body".into()),
                }
            }
        })?;
        decode_json(&bytes).map(ApiJson)
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Parse a JSON document into `T`, reporting failures as the api does for bodies.
/// Public so handlers that take raw bytes (e.g. per-item validation of a batch)
/// report errors the same way.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => data_error(&path, &inner.to_string()),
            _ => ApiError::BadRequest {
                code: "invalid_json",
                message: format!("request body is not valid JSON: {inner}"),
                field: Some("body".into()),
            },
        }
    })?;
    deserializer.end().map_err(|inner| ApiError::BadRequest {
        code: "invalid_json",
        message: format!("trailing characters after the JSON document: {inner}"),
        field: Some("body".into()),
    })?;
    Ok(value)
}

/// A JSON value already parsed (one event of a batch) as `T`, its errors
/// named as [`decode_json`] names them (`field` "body" for the value itself).
pub fn decode_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        data_error(&path, &err.into_inner().to_string())
    })
}

/// A query string deserialized into `T`; 400 naming the parameter otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(ApiQuery)
            .map_err(|err| {
                let path = err.path().to_string();
                data_error(&path, &err.into_inner().to_string())
            })
    }
}

/// Path parameters deserialized into `T`; 400 naming the parameter otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => {
                // Errors raised by the value's own Deserialize (a bad uuid, say)
                // carry no key; on a one-parameter route the key is known anyway.
                let only_param = RawPathParams::from_request_parts(parts, state)
                    .await
                    .ok()
                    .and_then(|params| {
                        let mut keys = params.iter().map(|(k, _)| k.to_owned());
                        match (keys.next(), keys.next()) {
                            (Some(key), None) => Some(key),
                            _ => None,
                        }
                    });
                Err(path_error(rejection, only_param))
            }
        }
    }
}

fn path_error(rejection: PathRejection, only_param: Option<String>) -> ApiError {
    use axum::extract::path::ErrorKind;
    let PathRejection::FailedToDeserializePathParams(failed) = rejection else {
        // Only reachable when a handler is mounted on a route without the
        // parameters it expects: a bug of ours, not of the caller.
        return ApiError::Internal(anyhow::anyhow!(
            "path parameters missing: {}",
            rejection.body_text()
        ));
    };
    let message = failed.body_text();
    let field = match failed.into_kind() {
        ErrorKind::ParseErrorAtKey { key, .. }
        | ErrorKind::InvalidUtf8InPathParam { key }
        | ErrorKind::DeserializeError { key, .. } => Some(key),
        ErrorKind::ParseErrorAtIndex { index, .. } => Some(format!("[{index}]")),
        _ => None,
    };
    ApiError::BadRequest {
        code: "invalid_path",
        message,
        field: field.or(only_param).or_else(|| Some("path".into())),
    }
}

/// Map a serde data error at `path` to a 400; serde reports missing and
/// unknown fields at the enclosing object, so the field's name is appended.
fn data_error(path: &str, message: &str) -> ApiError {
    let named = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(|name| join_path(path, name))
    };
    if let Some(field) = named("missing field `") {
        return ApiError::BadRequest {
            code: "missing_field",
            message: format!("{field} is required"),
            field: Some(field),
        };
    }
    if let Some(field) = named("unknown field `") {
        return ApiError::BadRequest {
            code: "unknown_field",
            message: format!("{field} is not a known field: {message}"),
            field: Some(field),
        };
    }
    let field = if path == "." || path.is_empty() {
        "body".to_owned()
    } else {
        path.to_owned()
    };
    ApiError::BadRequest {
        code: "invalid_field",
        message: format!("{field}: {message}"),
        field: Some(field),
    }
}

/// `path.name`, unless the path already ends with the name (serde_path_to_error
/// records an unknown key before the error is raised, but not a missing one).
fn join_path(path: &str, name: &str) -> String {
    if path == "." || path.is_empty() || path == name {
        name.to_owned()
    } else if path.ends_with(&format!(".{name}")) {
        path.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// `application/json` or any `application/*+json`, parameters ignored.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", subtype)) => subtype == "json" || subtype.ends_with("+json"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Arm {
        key: String,
        weight: f64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        key: String,
        arms: Vec<Arm>,
    }

    fn field_of(json: &str) -> (String, Option<String>) {
        match decode_json::<Body>(json.as_bytes()) {
            Err(ApiError::BadRequest { code, field, .. }) => (code.to_owned(), field),
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn names_the_offending_field() {
        assert_eq!(
            field_of(r#"{"arms":[]}"#),
            ("missing_field".into(), Some("key".into()))
        );
        assert_eq!(
            field_of(r#"{"key":"a","arms":[{"key":"x"}]}"#),
            ("missing_field".into(), Some("arms[0].weight".into()))
        );
        assert_eq!(
            field_of(r#"{"key":"a","arms":[{"key":"x","weight":"heavy"}]}"#),
            ("invalid_field".into(), Some("arms[0].weight".into()))
        );
        assert_eq!(
            field_of(r#"{"key":"a","arms":[],"colour":1}"#),
            ("unknown_field".into(), Some("colour".into()))
        );
        assert_eq!(
            field_of(r#"{"key":"a","arms":[{"key":"x","weight":1,"extra":true}]}"#),
            ("unknown_field".into(), Some("arms[0].extra".into()))
        );
        assert_eq!(
            field_of("42"),
            ("invalid_field".into(), Some("body".into()))
        );
        // serde lets a struct be written as an array; the path then says where.
        assert_eq!(
            field_of("[1]"),
            ("invalid_field".into(), Some("[0]".into()))
        );
        assert_eq!(
            field_of("{not json"),
            ("invalid_json".into(), Some("body".into()))
        );
        assert_eq!(
            field_of(r#"{"key":"a","arms":[]} trailing"#),
            ("invalid_json".into(), Some("body".into()))
        );
    }

    #[test]
    fn recognises_json_content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json_content_type(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!is_json_content_type(&HeaderMap::new()));
    }
}
