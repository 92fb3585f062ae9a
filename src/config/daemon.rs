//! The daemon file (`/etc/visiond/visiond.yaml`): the control plane, logging, the RTSP
//! server, shutdown, where the pipeline files are, and the models.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use super::broker::BrokerConfig;
use super::model::ModelConfig;
/// Keys of the daemon file, in the order they are documented.
pub const DAEMON_KEYS: &[&str] = &[
    "name",
    "http",
    "log",
    "rtsp",
    "shutdown",
    "outputs",
    "pipelines_dir",
    "models",
    "brokers",
];

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// The daemon's name in event topics and messages (`{daemon}`); the host name when
    /// absent.
    pub name: Option<String>,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub rtsp: RtspServerConfig,
    pub shutdown: ShutdownConfig,
    pub outputs: OutputsConfig,
    /// Resolved against the daemon file's directory.
    pub pipelines_dir: PathBuf,
    pub models: BTreeMap<String, ModelConfig>,
    /// Every name under `models`, including ones whose settings are invalid (already reported),
    /// so a pipeline naming them is not reported a second time as naming an undefined model.
    pub declared_models: BTreeSet<String>,
    /// Broker connections by name, shared by the pipelines that publish there.
    pub brokers: BTreeMap<String, BrokerConfig>,
    /// Every name under `brokers`, including ones whose settings are invalid (already
    /// reported), so a sink naming them is not reported again.
    pub declared_brokers: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Control plane: /, /healthz, /readyz, /metrics, /api/pipelines.
    #[serde(default = "default_http_listen", deserialize_with = "socket_address")]
    pub listen: SocketAddr,
    /// A file holding the bearer token that `PUT`/`DELETE /api/pipelines/<name>` require;
    /// without it those endpoints are off. Resolved against the daemon file's directory.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Connections open at once. At the cap a new one takes the place of the one longest
    /// without a request in hand, or waits a moment for a slot; so idle sockets cannot use up
    /// the process's file descriptors or keep `/healthz` from answering.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a request's headers may take to arrive, from their first byte.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// How long a connection may stay quiet (nothing read or written, no request being
    /// handled) before it is closed: a keep-alive connection between requests, a client that
    /// connected and sent nothing, or one that stopped reading its response.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// When set, only requests whose `Host` is one of these (a name or address, with or
    /// without `:port`) are answered; others get 421. Keeps a web page on another site from
    /// reaching the control plane through DNS rebinding.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    /// What a pipeline written over HTTP (`PUT`) may use.
    #[serde(default)]
    pub writes: WritesConfig,
    /// A file holding the bearer token that watching needs (the live views, WHEP and MSE, and
    /// `/view/<name>`); the write token is accepted too. Without it, watching is open to
    /// whoever reaches the control plane. Resolved against the daemon file's directory.
    #[serde(default)]
    pub view_token_file: Option<PathBuf>,
    /// Live viewing in browsers: WebRTC (WHEP) and MSE.
    #[serde(default)]
    pub webrtc: WebrtcConfig,
}

/// `http.webrtc`: how browsers reach a pipeline's live video.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebrtcConfig {
    /// A STUN server (`stun://host:port`), for viewers behind NAT to learn their address.
    #[serde(default)]
    pub stun: Option<String>,
    /// A TURN server (`turn://user:password@host:port`), relaying for viewers that no direct
    /// path reaches.
    #[serde(default)]
    pub turn: Option<String>,
    /// Live viewers of one pipeline at once, WebRTC and MSE together; one more is refused
    /// (503) rather than slow the others down.
    #[serde(default = "default_max_viewers")]
    pub max_viewers: usize,
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        Self {
            stun: None,
            turn: None,
            max_viewers: default_max_viewers(),
        }
    }
}

fn default_max_viewers() -> usize {
    8
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            token_file: None,
            max_connections: default_max_connections(),
            header_timeout_ms: default_header_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            allowed_hosts: None,
            writes: WritesConfig::default(),
            view_token_file: None,
            webrtc: WebrtcConfig::default(),
        }
    }
}

impl HttpConfig {
    /// Whether `other` differs in what the server was started with (everything but `writes`,
    /// which the daemon reads on every write).
    pub fn server_differs(&self, other: &Self) -> bool {
        let server = |http: &Self| Self {
            writes: WritesConfig::default(),
            ..http.clone()
        };
        server(self) != server(other)
    }
}

/// `http.writes`: a pipeline written with `PUT` can name files the daemon reads and writes,
/// and GStreamer text it runs; the operator says which, in the daemon file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritesConfig {
    /// Whether such a pipeline may use what hands GStreamer text to run: a `launch` source or
    /// sink, `encoder.properties`. Off by default: they can read and write any file.
    #[serde(default)]
    pub allow_launch: bool,
    /// The directories whose files such a pipeline may name (recordings, `depth16`, `jsonl`,
    /// a `file://` source); none by default. Resolved against the daemon file's directory.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// The environment variables such a pipeline may name in `credentials.password_env`; none
    /// by default. Otherwise a write could send any variable's value (a token, another
    /// camera's password) to a server of its choosing.
    #[serde(default)]
    pub password_envs: Vec<String>,
}

/// Accepts any scalar so that `listen: 9090` gets a message that says what is wanted.
fn socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let value = serde_yaml::Value::deserialize(deserializer)?;
    let text = match &value {
        serde_yaml::Value::String(text) => text.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "'{text}' is not an address:port such as 127.0.0.1:9090 or [::1]:9090"
        ))
    })
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090)
}

/// A few browser tabs, a scraper and probes need a handful each; the cap is counted in the
/// file-descriptor estimate the daemon checks at start.
fn default_max_connections() -> usize {
    64
}

fn default_header_timeout_ms() -> u64 {
    10_000
}

/// Longer than Prometheus's usual 15 s scrape interval, so a scraper keeps its connection.
fn default_idle_timeout_ms() -> u64 {
    60_000
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default)]
    pub level: LogLevel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines for a terminal or journald.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// The daemon's one RTSP server; pipelines add mounts to it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtspServerConfig {
    #[serde(default = "default_rtsp_address")]
    pub address: IpAddr,
    #[serde(default = "default_rtsp_port")]
    pub port: u16,
    /// Basic authentication for every mount; the password comes from the environment so that
    /// it never sits in a world-readable file or a log line.
    #[serde(default)]
    pub auth: Option<BasicAuth>,
    /// Clients connected at once, every mount together; one more is closed at once. Each
    /// holds a descriptor or three: without a bound, idle connections can take them all.
    #[serde(default = "default_rtsp_max_clients")]
    pub max_clients: usize,
    /// How long a connected client may take to set up a session before it is closed (an
    /// idle connection holds a descriptor and gives nothing).
    #[serde(default = "default_rtsp_setup_timeout_ms")]
    pub setup_timeout_ms: u64,
}

impl Default for RtspServerConfig {
    fn default() -> Self {
        Self {
            address: default_rtsp_address(),
            port: default_rtsp_port(),
            auth: None,
            max_clients: default_rtsp_max_clients(),
            setup_timeout_ms: default_rtsp_setup_timeout_ms(),
        }
    }
}

fn default_rtsp_max_clients() -> usize {
    64
}

fn default_rtsp_setup_timeout_ms() -> u64 {
    10_000
}

fn default_rtsp_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

fn default_rtsp_port() -> u16 {
    8554
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    /// Name of the environment variable holding the password.
    pub password_env: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long SIGINT/SIGTERM waits for queued frames to drain and files to finalize.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_ms: default_grace_ms(),
        }
    }
}

fn default_grace_ms() -> u64 {
    5000
}

/// How a video output or recording that failed (a full disk, a sink error) is retried: after
/// `retry_initial_ms`, doubling on each failure up to `retry_max_ms`. The count of failures
/// starts again only once the output has run for `retry_max_ms` without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsConfig {
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

impl Default for OutputsConfig {
    fn default() -> Self {
        Self {
            retry_initial_ms: default_retry_initial_ms(),
            retry_max_ms: default_retry_max_ms(),
        }
    }
}

fn default_retry_initial_ms() -> u64 {
    1000
}

fn default_retry_max_ms() -> u64 {
    60_000
}
