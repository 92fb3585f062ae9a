//! The gRPC channel to a served model's server: plain or TLS (a CA, a client certificate for
//! mutual TLS), with a bearer token on every call; and the readiness checks made at start, on
//! reconnect and by `visiond check --probe`.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use super::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use super::proto::{ModelMetadataRequest, ModelReadyRequest, ServerReadyRequest};
use super::signature::Signature;
use crate::config::RemoteConfig;
use crate::runtime::RemoteFailure;

/// The generated client over a channel that adds the bearer token.
pub type Client = GrpcInferenceServiceClient<InterceptedService<Channel, Bearer>>;

/// Responses as large as a segmentation model's logits for a batch of big frames.
const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Adds `authorization: Bearer <token>` to every call (marked sensitive: never logged).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A client for `remote`'s server. The connection is made on first use and remade after it is
/// lost; must be called inside a tokio runtime. An error here (an unreadable certificate or
/// token file) is a configuration error.
pub fn connect(remote: &RemoteConfig) -> Result<Client, String> {
    let scheme_less = remote.authority();
    let uri = if remote.uses_tls() {
        format!("https://{scheme_less}")
    } else {
        format!("http://{scheme_less}")
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| format!("{}: not a usable address: {e}", remote.url))?
        .connect_timeout(Duration::from_millis(remote.timeout_ms.max(1000)))
        .tcp_nodelay(true)
        // A server that vanished without closing the connection is noticed within seconds.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if remote.uses_tls() {
        endpoint = endpoint
            .tls_config(tls(remote)?)
            .map_err(|e| format!("{}: TLS settings refused: {e}", remote.url))?;
    }
    let bearer = match &remote.token_file {
        Some(file) => {
            let token = std::fs::read_to_string(file)
                .map_err(|e| format!("token_file {}: cannot read: {e}", file.display()))?;
            let token = token.trim();
            if token.is_empty() {
                return Err(format!("token_file {}: is empty", file.display()));
            }
            let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                format!(
                    "token_file {}: the token holds characters a header cannot carry",
                    file.display()
                )
            })?;
            value.set_sensitive(true);
            Some(value)
        }
        None => None,
    };
    let channel = endpoint.connect_lazy();
    Ok(
        GrpcInferenceServiceClient::with_interceptor(channel, Bearer(bearer))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

fn tls(remote: &RemoteConfig) -> Result<ClientTlsConfig, String> {
    let read = |what: &str, file: &std::path::Path| {
        std::fs::read(file).map_err(|e| format!("tls.{what} {}: cannot read: {e}", file.display()))
    };
    let mut config = ClientTlsConfig::new();
    let settings = remote.tls.clone().unwrap_or_default();
    if let Some(ca) = &settings.ca_file {
        config = config.ca_certificate(Certificate::from_pem(read("ca_file", ca)?));
    } else {
        config = config.with_enabled_roots();
    }
    if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
        config = config.identity(Identity::from_pem(
            read("cert_file", cert)?,
            read("key_file", key)?,
        ));
    }
    let domain = settings.domain.clone().unwrap_or_else(|| {
        let authority = remote.authority();
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
            .trim_matches(['[', ']'])
            .to_owned()
    });
    Ok(config.domain_name(domain))
}

/// Why a served model cannot take requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// The server is down, unreachable, or not ready yet: it may come.
    Unavailable(String),
    /// The server answers, but not with the model visiond expects (unknown name, other
    /// tensors): a configuration problem, named with both sides.
    Mismatch(String),
}

impl NotReady {
    pub fn reason(&self) -> &str {
        match self {
            Self::Unavailable(reason) | Self::Mismatch(reason) => reason,
        }
    }
}

/// How a failed call's status counts.
pub fn classify(status: &Status) -> RemoteFailure {
    match status.code() {
        Code::DeadlineExceeded => RemoteFailure::Timeout,
        // tonic ends a call whose `grpc-timeout` ran out on this side as "Timeout expired".
        Code::Cancelled
            if status
                .message()
                .to_ascii_lowercase()
                .contains("timeout expired") =>
        {
            RemoteFailure::Timeout
        }
        Code::Unavailable | Code::Cancelled => RemoteFailure::Unavailable,
        // A connection that broke under a call surfaces as an HTTP/2 or transport error.
        Code::Unknown | Code::Internal => {
            let message = status.message().to_ascii_lowercase();
            let broken = [
                "transport",
                "connection",
                "h2 protocol",
                "broken pipe",
                "reset",
                "stream closed",
            ]
            .iter()
            .any(|word| message.contains(word));
            if broken {
                RemoteFailure::Unavailable
            } else {
                RemoteFailure::Error
            }
        }
        _ => RemoteFailure::Error,
    }
}

/// A status as people read it: its message, and its code when that says more.
pub fn describe(status: &Status) -> String {
    let mut message = status.message().trim().to_owned();
    if message.is_empty() {
        message = "no message".to_owned();
    }
    // A transport failure's cause ("Connection refused") sits in the error's sources.
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    format!("{message} (gRPC {:?})", status.code())
}

/// ServerReady, then the model's metadata (checked against `signature`), then ModelReady;
/// each call bounded by `timeout`.
pub async fn check(
    client: &mut Client,
    remote: &RemoteConfig,
    signature: &Signature,
    timeout: Duration,
) -> Result<(), NotReady> {
    let url = &remote.url;
    let served = remote.served_name();
    let unavailable = |what: &str, status: Status| {
        NotReady::Unavailable(format!("{what} {url}: {}", describe(&status)))
    };
    let ready = call(
        timeout,
        client.server_ready(bounded(ServerReadyRequest {}, timeout)),
    )
    .await
    .map_err(|status| unavailable("cannot reach", status))?;
    if !ready.ready {
        return Err(NotReady::Unavailable(format!(
            "the server at {url} is not ready"
        )));
    }
    let metadata = call(
        timeout,
        client.model_metadata(bounded(
            ModelMetadataRequest {
                name: remote.model.clone(),
                version: remote.version.clone(),
            },
            timeout,
        )),
    )
    .await
    .map_err(|status| match classify(&status) {
        RemoteFailure::Error => NotReady::Mismatch(format!(
            "the server at {url} has no model '{served}' (its metadata: {})",
            describe(&status)
        )),
        _ => unavailable(
            &format!("cannot read model '{served}''s metadata from"),
            status,
        ),
    })?;
    signature.check(&metadata).map_err(|problems| {
        NotReady::Mismatch(format!(
            "model '{served}' at {url} does not fit this processor: {problems}"
        ))
    })?;
    let ready = call(
        timeout,
        client.model_ready(bounded(
            ModelReadyRequest {
                name: remote.model.clone(),
                version: remote.version.clone(),
            },
            timeout,
        )),
    )
    .await
    .map_err(|status| {
        unavailable(
            &format!("cannot ask whether model '{served}' is ready at"),
            status,
        )
    })?;
    if !ready.ready {
        return Err(NotReady::Unavailable(format!(
            "model '{served}' is not ready on {url} (loading?)"
        )));
    }
    Ok(())
}

/// A request whose deadline travels to the server too (`grpc-timeout`).
pub fn bounded<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// A call that gives up after `timeout` on this side as well.
async fn call<T>(
    timeout: Duration,
    future: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}
