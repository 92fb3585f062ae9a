//! The daemon file's `brokers:`: named connections to MQTT brokers and Kafka clusters, shared by
//! every pipeline that publishes there (`- mqtt: { broker: site, ... }` under `metadata:`), and
//! carrying the daemon's availability and its pipelines' events.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// One broker connection. Written as a one-key map: `site: { mqtt: { url: ... } }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BrokerConfig {
    Mqtt(MqttBroker),
    Kafka(KafkaBroker),
}

impl BrokerConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Mqtt(_) => "mqtt",
            Self::Kafka(_) => "kafka",
        }
    }

    /// Whether the daemon's availability and its pipelines' events go to this broker.
    pub fn carries_events(&self) -> bool {
        match self {
            Self::Mqtt(mqtt) => mqtt.events,
            Self::Kafka(kafka) => kafka.events,
        }
    }
}

/// An MQTT 3.1.1 broker: `mqtt://host[:1883]` or `mqtts://host[:8883]` (TLS).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttBroker {
    pub url: String,
    /// The client identifier; `visiond-<daemon name>` when absent. Two clients with one
    /// identifier throw each other off the broker, so each daemon needs its own.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding the password (never the password itself).
    #[serde(default)]
    pub password_env: Option<String>,
    /// PEM file of the certificate authorities that sign the broker's certificate (mqtts);
    /// the system's are not read, so a site's private CA is the usual case.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM files of a client certificate and its key, for brokers that require one (mqtts).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Seconds between pings while idle; the broker sends the last will after 1.5 times this
    /// without hearing from the daemon.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    #[serde(default)]
    pub reconnect: BrokerReconnect,
    /// Messages sent and not yet acknowledged (qos 1) at most.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// Publish the daemon's availability (`{prefix}/{daemon}/availability`, `offline` as the
    /// last will) and each pipeline's state and events here.
    #[serde(default = "yes")]
    pub events: bool,
    /// The first level of the event topics.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
}

/// A Kafka cluster, reached through any of its `bootstrap` brokers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaBroker {
    /// `host:port[,host:port...]`.
    pub bootstrap: String,
    /// `visiond-<daemon name>` when absent.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub reconnect: BrokerReconnect,
    /// Messages handed to the producer and not yet acknowledged at most.
    #[serde(default = "default_kafka_inflight")]
    pub inflight: u32,
    /// Publish the daemon's availability and each pipeline's state and events here.
    #[serde(default = "yes")]
    pub events: bool,
    /// The topic events go to, keyed by pipeline (by daemon for availability).
    #[serde(default = "default_events_topic")]
    pub events_topic: String,
    /// Further librdkafka producer settings (`linger.ms: "5"`, `acks: all`), passed as they
    /// are; never logged.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Reconnection after a broker is lost: after `initial_ms`, doubling up to `max_ms`, each
/// delay varied by up to a fifth so that a site's daemons do not all come back at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerReconnect {
    #[serde(default = "default_reconnect_initial_ms")]
    pub initial_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub max_ms: u64,
}

impl Default for BrokerReconnect {
    fn default() -> Self {
        Self {
            initial_ms: default_reconnect_initial_ms(),
            max_ms: default_reconnect_max_ms(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_keep_alive_s() -> u64 {
    30
}

fn default_inflight() -> u16 {
    100
}

fn default_kafka_inflight() -> u32 {
    1000
}

fn default_topic_prefix() -> String {
    "visiond".into()
}

fn default_events_topic() -> String {
    "visiond.events".into()
}

fn default_reconnect_initial_ms() -> u64 {
    500
}

/// Short: a broker on the site's network is back within seconds, and every second away is
/// a second of results waiting in the spool.
fn default_reconnect_max_ms() -> u64 {
    3000
}

/// Where an MQTT URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttAddress {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl MqttAddress {
    /// Reads `mqtt://host[:port]` or `mqtts://host[:port]` (a trailing `/` is allowed).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!(
                "'{}' is not an MQTT URL; expected mqtt://host[:port] or mqtts://host[:port] (TLS)",
                super::limits::shown(url)
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(
                "credentials do not go in the URL; use `username` and `password_env`".into(),
            );
        }
        if rest.contains(['/', '?', '#']) {
            return Err(format!(
                "'{}' has a path; an MQTT URL is only mqtt://host[:port]",
                super::limits::shown(url)
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = split_host_port(rest, default_port)?;
        Ok(Self { tls, host, port })
    }
}

/// `host[:port]`, with `[v6]` hosts; the port defaults to `default_port`.
pub fn split_host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err(format!(
                "'{text}' opens an IPv6 address that is never closed"
            ));
        };
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(format!("'{}' names no host", super::limits::shown(text)));
    }
    let port = match port {
        None => default_port,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(format!(
                    "'{}' is not a port between 1 and 65535",
                    super::limits::shown(port)
                ));
            }
        },
    };
    Ok((host.to_string(), port))
}
