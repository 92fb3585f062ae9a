//! What every request and every response of the control plane passes through: the `Host`
//! allow-list (`http.allowed_hosts`), and `X-Content-Type-Options: nosniff` on every answer so
//! that no browser reads a JSON error or a snapshot as a page.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// `http.allowed_hosts`: None answers any `Host`.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(Option<Arc<Vec<HostPort>>>);

/// A host (name, IPv4 address or bracketed IPv6 address) and its port, if given.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPort {
    host: String,
    port: Option<u16>,
}

impl HostPort {
    /// Splits `example.com:9090`, `[::1]:9090`, `localhost`; the host is lower-cased.
    fn parse(text: &str) -> Self {
        let text = text.trim();
        let split = match text.rfind(':') {
            Some(colon) if !text[colon..].contains(']') => text[colon + 1..]
                .parse::<u16>()
                .ok()
                .map(|port| (&text[..colon], port)),
            _ => None,
        };
        // A bare IPv6 address (`::1`) has colons but no port.
        let (host, port) = match split {
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => (host, Some(port)),
            _ => (text, None),
        };
        Self {
            host: host.to_ascii_lowercase(),
            port,
        }
    }

    /// Whether `self`, an allowed entry, admits `asked`: the same host, and the same port
    /// when the entry names one.
    fn admits(&self, asked: &HostPort) -> bool {
        self.host == asked.host && self.port.is_none_or(|port| asked.port == Some(port))
    }
}

impl AllowedHosts {
    pub fn new(hosts: Option<&[String]>) -> Self {
        Self(hosts.map(|hosts| Arc::new(hosts.iter().map(|h| HostPort::parse(h)).collect())))
    }

    /// Whether a request for `asked` (its `Host`, or the authority of an absolute URI) is
    /// answered; otherwise the refusal.
    #[allow(clippy::result_large_err)]
    fn check(&self, asked: Option<&str>) -> Result<(), Response> {
        let Some(allowed) = &self.0 else {
            return Ok(());
        };
        let Some(asked) = asked else {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "the request names no Host, and this daemon answers only the hosts in http.allowed_hosts"
                    .to_string(),
            ));
        };
        let parsed = HostPort::parse(asked);
        if allowed.iter().any(|entry| entry.admits(&parsed)) {
            return Ok(());
        }
        Err(refusal(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "host '{}' is not one this daemon answers (http.allowed_hosts)",
                crate::config::shown(asked)
            ),
        ))
    }
}

fn refusal(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// The middleware: refuses a request for a host not allowed, and marks every response
/// `nosniff`.
pub async fn guard(State(hosts): State<AllowedHosts>, request: Request, next: Next) -> Response {
    let asked = match request.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => request
            .headers()
            .get(header::HOST)
            .and_then(|value| value.to_str().ok()),
    };
    let mut response = match hosts.check(asked) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal,
    };
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_by_name_and_by_port_when_one_is_given() {
        let allowed = AllowedHosts::new(Some(&[
            "Visiond.Local".to_string(),
            "127.0.0.1:9090".to_string(),
            "[::1]".to_string(),
        ]));
        for asked in [
            "visiond.local",
            "VISIOND.local:8080",
            "127.0.0.1:9090",
            "[::1]:9090",
            "[::1]",
        ] {
            assert!(allowed.check(Some(asked)).is_ok(), "{asked}");
        }
        for asked in [
            "evil.example",
            "127.0.0.1:9091",
            "127.0.0.1",
            "visiond.local.evil",
        ] {
            let refused = allowed.check(Some(asked)).unwrap_err();
            assert_eq!(refused.status(), StatusCode::MISDIRECTED_REQUEST, "{asked}");
        }
        assert_eq!(
            allowed.check(None).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        assert!(AllowedHosts::default().check(Some("anything")).is_ok());
        assert_eq!(
            HostPort::parse("::1"),
            HostPort {
                host: "::1".into(),
                port: None
            }
        );
    }
}
