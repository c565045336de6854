//! The api's error type: every failure maps to a status and a JSON body
//! `{"error": {"code", "message", "field"?}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use domain::ValidationError;
use repositories::RepoError;

/// What went wrong, in terms a client can act on.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Validation(#[from] ValidationError),
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("this key's role may not call this route")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(String),
    /// A 404 that names the path or body field holding the unknown reference.
    #[error("{what} not found")]
    NotFoundAt { field: String, what: String },
    #[error("{0}")]
    Conflict(String),
    /// A 409 that names the field whose state refuses the change.
    #[error("{message}")]
    ConflictAt { field: String, message: String },
    #[error("method {0} is not allowed on this route")]
    MethodNotAllowed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0} is unavailable")]
    Unavailable(String),
    /// The whole request took longer than the api's time limit.
    #[error("the request took longer than {0} ms")]
    TimedOut(u64),
    #[error("the api is serving as many requests as it may at once; retry in 1 s")]
    Overloaded,
    #[error("too many requests {}; retry in {} s", .0.scope.describe(), .0.retry_after_s())]
    RateLimited(crate::rate_limit::Refused),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The JSON error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// One error: a stable code, a message, and the offending field when there is one.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code: "invalid_request",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// 404 naming `field`, e.g. `not_found("key", "experiment home")`.
    pub fn not_found(field: impl Into<String>, what: impl Into<String>) -> Self {
        Self::NotFoundAt {
            field: field.into(),
            what: what.into(),
        }
    }

    /// 409 naming `field`, e.g. `conflict("status", "a running experiment's arms cannot change")`.
    pub fn conflict(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::ConflictAt {
            field: field.into(),
            message: message.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<String>) {
        match self {
            Self::Validation(e) => (
                StatusCode::BAD_REQUEST,
                "validation_failed",
                Some(e.field.clone()),
            ),
            Self::BadRequest { code, field, .. } => (StatusCode::BAD_REQUEST, code, field.clone()),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                Some("x-api-key".into()),
            ),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden", Some("x-api-key".into())),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            Self::NotFoundAt { field, .. } => {
                (StatusCode::NOT_FOUND, "not_found", Some(field.clone()))
            }
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            Self::ConflictAt { field, .. } => {
                (StatusCode::CONFLICT, "conflict", Some(field.clone()))
            }
            Self::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                Some("method".into()),
            ),
            Self::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                Some("body".into()),
            ),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                Some("content-type".into()),
            ),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            Self::TimedOut(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout", None),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", None),
            Self::RateLimited(refused) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                Some(refused.scope.field().into()),
            ),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        }
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::NotFound(what) => Self::NotFound(what),
            RepoError::Conflict(what) => Self::Conflict(what),
            e if e.is_transient() => Self::Unavailable(e.to_string()),
            e => Self::Internal(e.into()),
        }
    }
}

/// A port's failure: transient ones (a store down, a timeout) are 503s.
impl From<domain::ports::pipeline::StoreError> for ApiError {
    fn from(e: domain::ports::pipeline::StoreError) -> Self {
        if e.transient {
            Self::Unavailable(e.store.to_owned())
        } else {
            Self::Internal(e.into())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field) = self.parts();
        let message = match &self {
            // Internal details go to the log, not to the client.
            Self::Internal(e) => {
                tracing::error!(error = ?e, "request failed");
                "internal error".to_owned()
            }
            Self::Unavailable(e) => {
                tracing::warn!(error = %e, "dependency unavailable");
                self.to_string()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
                field,
            },
        };
        let mut response = (status, Json(body)).into_response();
        let retry_after = match &self {
            Self::RateLimited(refused) => Some(refused.retry_after_s()),
            Self::Overloaded => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
