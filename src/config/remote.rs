//! `models.<name>.remote`: a model served by an inference server that speaks the Open Inference
//! Protocol (KServe v2) over gRPC (Triton, MLServer, KServe, Seldon), with what the connection
//! needs (TLS, a bearer token) and what goes over it. Pure data.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::error::FileErrors;

/// What the frames are sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteInput {
    /// `pixel_values` as the image processor makes them, in the model's `dtype` (FP32, FP16 or
    /// BF16 on the wire).
    #[default]
    Float,
    /// The resized (and cropped) image as UINT8: a quarter of FP32's bytes; the served model
    /// rescales, normalises and pads (`tools/export_triton.py --input uint8` builds that in).
    Uint8,
}

impl fmt::Display for RemoteInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Float => "float",
            Self::Uint8 => "uint8",
        })
    }
}

/// `remote.tls`: the server's certificate authority, and a client certificate for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the server's certificate; without it the system's roots
    /// are not used either (an inference server's certificate is rarely public): set it.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and its key, for servers that require mutual TLS. Both or neither.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the URL's host.
    #[serde(default)]
    pub domain: Option<String>,
}

/// A served model as configured; its processor comes from `models.<name>.processor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// `grpc://host:port` (plain HTTP/2) or `grpcs://host:port` (TLS).
    pub url: String,
    /// The model's name on the server.
    pub model: String,
    /// Its version; empty lets the server choose.
    pub version: String,
    /// How long one request may take, from sending to the answer.
    pub timeout_ms: u64,
    /// Requests outstanding at once: above 1 the round trip of one batch hides behind the next.
    pub max_in_flight: usize,
    pub input: RemoteInput,
    /// The served model's input and output tensor names (defaults: `pixel_values`, and
    /// `predicted_depth` or `logits` by task).
    pub input_name: Option<String>,
    pub output_name: Option<String>,
    pub tls: Option<TlsConfig>,
    /// A file holding the bearer token sent with every request (`authorization: Bearer ...`).
    pub token_file: Option<PathBuf>,
}

impl RemoteConfig {
    /// Whether the URL asks for TLS.
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("grpcs://") || self.url.starts_with("https://")
    }

    /// `host:port` of the URL (what errors name; credentials never appear in a URL here).
    pub fn authority(&self) -> &str {
        self.url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, rest)| rest)
            .trim_end_matches('/')
    }

    /// The model as the server knows it: `name` or `name@version`.
    pub fn served_name(&self) -> String {
        if self.version.is_empty() {
            self.model.clone()
        } else {
            format!("{}@{}", self.model, self.version)
        }
    }
}

/// Default request timeout.
const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Default requests outstanding.
const DEFAULT_MAX_IN_FLIGHT: usize = 2;
/// More would only queue on the server: each one holds a batch of frames in memory here.
pub const MAX_IN_FLIGHT: usize = 64;

/// `remote:` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSection {
    pub url: String,
    pub model: String,
    /// A string or a number (`version: 1` reads as "1").
    #[serde(default, deserialize_with = "version")]
    pub version: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub input: RemoteInput,
    #[serde(default)]
    pub input_name: Option<String>,
    #[serde(default)]
    pub output_name: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_max_in_flight() -> usize {
    DEFAULT_MAX_IN_FLIGHT
}

fn version<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = Option::<serde_yaml::Value>::deserialize(deserializer)?;
    match value {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::String(text)) => Ok(Some(text)),
        Some(serde_yaml::Value::Number(n)) if n.as_u64().is_some() => Ok(Some(n.to_string())),
        Some(_) => Err(serde::de::Error::custom(
            "expected a version such as \"1\" (a string or a whole number)",
        )),
    }
}

impl RemoteSection {
    /// The typed section, every problem reported under `key` (`models.<name>.remote`).
    pub fn parse(self, key: &str, errors: &mut FileErrors<'_>) -> Option<RemoteConfig> {
        let before = errors.len();
        match self.url.split_once("://") {
            Some(("grpc" | "grpcs" | "http" | "https", rest))
                if !rest.is_empty() && !rest.contains(['@', ' ']) =>
            {
                let host_port = rest.trim_end_matches('/');
                let has_port = host_port
                    .rsplit_once(':')
                    .is_some_and(|(_, port)| port.parse::<u16>().is_ok_and(|p| p > 0));
                if !has_port || host_port.contains('/') {
                    errors.push(
                        format!("{key}.url"),
                        format!(
                            "'{}' needs a host and a port and nothing after them, e.g. grpc://triton:8001",
                            self.url
                        ),
                    );
                }
            }
            _ => errors.push(
                format!("{key}.url"),
                format!(
                    "'{}' is not a gRPC address: expected grpc://host:port (plain) or grpcs://host:port (TLS), without credentials",
                    super::shown(&self.url)
                ),
            ),
        }
        if self.model.trim().is_empty() {
            errors.push(
                format!("{key}.model"),
                "the model's name on the server is empty",
            );
        }
        if self.timeout_ms == 0 {
            errors.push(format!("{key}.timeout_ms"), "must be at least 1");
        }
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT {
            errors.push(
                format!("{key}.max_in_flight"),
                format!("must be 1 to {MAX_IN_FLIGHT}"),
            );
        }
        for (name, value) in [
            ("input_name", &self.input_name),
            ("output_name", &self.output_name),
        ] {
            if value.as_ref().is_some_and(|v| v.trim().is_empty()) {
                errors.push(format!("{key}.{name}"), "is empty");
            }
        }
        let tls_scheme = self.url.starts_with("grpcs://") || self.url.starts_with("https://");
        if let Some(tls) = &self.tls {
            if !tls_scheme {
                errors.push(
                    format!("{key}.tls"),
                    "set, but the url is plain (grpc://): use grpcs://host:port for TLS",
                );
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                errors.push(
                    format!("{key}.tls"),
                    "mutual TLS needs both cert_file and key_file",
                );
            }
        }
        if errors.len() > before {
            return None;
        }
        Some(RemoteConfig {
            url: self.url,
            model: self.model,
            version: self.version.unwrap_or_default(),
            timeout_ms: self.timeout_ms,
            max_in_flight: self.max_in_flight,
            input: self.input,
            input_name: self.input_name,
            output_name: self.output_name,
            tls: self.tls,
            token_file: self.token_file,
        })
    }
}
