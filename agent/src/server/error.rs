//! API errors: every library error becomes `{"error": {"kind", "message"}}` with the HTTP status its
//! [`ErrorKind`] decides; bodies, paths and queries that do not parse are 400s naming the field.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Classify, ErrorKind};

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    /// What went wrong and what to fix (never a secret).
    pub message: String,
}

impl ErrorBody {
    pub fn of(err: &(impl Classify + std::fmt::Display)) -> Self {
        ErrorBody {
            kind: err.kind(),
            message: err.to_string(),
        }
    }
}

/// `{"error": ...}`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// An error answered by the API.
#[derive(Debug)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    pub fn of(err: &(impl Classify + std::fmt::Display)) -> Self {
        ApiError::new(err.kind(), err.to_string())
    }
}

impl<E: Classify + std::fmt::Display> From<E> for ApiError {
    fn from(err: E) -> Self {
        ApiError::of(&err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(kind = self.kind.metric_label(), message = %self.message, "API error");
        }
        let body = ErrorResponse {
            error: ErrorBody {
                kind: self.kind,
                message: self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}

/// A JSON body; one that does not parse is a 400 that names the field (serde's message).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                ErrorKind::Invalid,
                "send the body as JSON with Content-Type: application/json",
            )),
            Err(e) => Err(ApiError::new(ErrorKind::Invalid, e.body_text())),
        }
    }
}

/// Path parameters; ones that do not decode are a 400.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::new(ErrorKind::Invalid, e.body_text()))
    }
}

/// Query parameters; ones that do not parse are a 400 that names the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::new(ErrorKind::Invalid, e.body_text()))
    }
}
