//! `/api/pipelines/<name>`: read one pipeline, and manage pipelines over HTTP as DeepStream's
//! and Savant's users manage cameras. `PUT` takes a pipeline's YAML (or JSON, which is YAML),
//! `DELETE` removes it; both are validated and applied by the daemon through the same path as a
//! reload, and the pipeline files stay the one source of truth (a `PUT` writes one, atomically).
//! Writes need `Authorization: Bearer <token>`, the token being the first line of
//! `http.token_file`; without a token file the write endpoints are off. The token is checked
//! before the body is read, so an unauthenticated client cannot make the daemon take in even
//! [`BODY_LIMIT`] bytes.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::oneshot;

use super::api::{Api, Writes};
use super::reads::PipelineStatus;
use super::requests::{Answer, Request};
use crate::preflight::files::read_token;

/// The largest body a `PUT` takes: a pipeline file is a few hundred bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long a `PUT`'s body may take to arrive once its token was accepted: a request in its
/// handler is never closed for being quiet, so a body sent a byte at a time must end somehow.
pub const BODY_WAIT: Duration = Duration::from_secs(10);

pub async fn get_pipeline(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let view = api.view.current();
    match view.pipeline(&name) {
        Some(pipeline) => axum::Json(PipelineStatus::of(pipeline)).into_response(),
        None => not_found(&name),
    }
}

pub async fn put_pipeline(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let writes = match authorize(&api, &headers) {
        Ok(writes) => writes,
        Err(refusal) => return refusal,
    };
    let body = match tokio::time::timeout(BODY_WAIT, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(bytes)) => bytes,
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the body did not arrive within {} s", BODY_WAIT.as_secs()),
            );
        }
        Ok(Err(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the body is larger than {} KiB (a pipeline file is a few hundred bytes), or was cut off",
                    BODY_LIMIT / 1024
                ),
            );
        }
    };
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        return error(StatusCode::BAD_REQUEST, "the body is not UTF-8 text");
    };
    let (reply, answer) = oneshot::channel();
    ask(&writes, Request::Put { name, body, reply }, answer).await
}

pub async fn delete_pipeline(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let writes = match authorize(&api, &headers) {
        Ok(writes) => writes,
        Err(refusal) => return refusal,
    };
    let (reply, answer) = oneshot::channel();
    ask(&writes, Request::Delete { name, reply }, answer).await
}

/// Hands the request to the daemon and turns its answer into a response.
async fn ask(writes: &Writes, request: Request, answer: oneshot::Receiver<Answer>) -> Response {
    if !writes.requests.offer(request) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is busy or stopping; try again",
        );
    }
    match answer.await {
        Ok(Answer::Applied { changes, created }) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, axum::Json(json!({ "applied": changes }))).into_response()
        }
        Ok(Answer::Invalid(errors)) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "errors": errors })),
        )
            .into_response(),
        Ok(Answer::Forbidden(errors)) => (
            StatusCode::FORBIDDEN,
            axum::Json(json!({ "errors": errors })),
        )
            .into_response(),
        Ok(Answer::Conflict(reason)) => error(StatusCode::CONFLICT, &reason),
        Ok(Answer::NotFound(name)) => not_found(&name),
        Ok(Answer::Failed(reason)) => error(StatusCode::INTERNAL_SERVER_ERROR, &reason),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping"),
    }
}

/// The write side when the request carries the configured token; otherwise the response.
#[allow(clippy::result_large_err)]
fn authorize(api: &Api, headers: &HeaderMap) -> Result<Writes, Response> {
    let Some(writes) = &api.writes else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "writes are off: set http.token_file in the daemon file to enable them",
        ));
    };
    let token = match read_token(&writes.token_file) {
        Ok(token) => token,
        Err(reason) => {
            // The reason names the file; the client, not yet authenticated, learns nothing.
            tracing::error!(%reason, "cannot check a write request");
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the daemon cannot check tokens now; its log says why",
            ));
        }
    };
    match bearer_token(headers) {
        Some(offered) if same(offered.as_bytes(), token.as_bytes()) => Ok(writes.clone()),
        _ => Err((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({ "error": "a valid bearer token is required" })),
        )
            .into_response()),
    }
}

/// The token of an `Authorization: Bearer <token>` header; the scheme's name is
/// case-insensitive (RFC 9110, 11.1).
pub(super) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Compares in time that does not depend on where the first difference is.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn not_found(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("no pipeline named '{name}'"),
    )
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer_token(&headers).map(str::to_string)
        };
        for value in ["Bearer abc", "bearer abc", "BEARER  abc ", "bEaReR abc"] {
            assert_eq!(with(value).as_deref(), Some("abc"), "{value}");
        }
        assert_eq!(with("Basic abc"), None);
        assert_eq!(with("Bearerabc"), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}
