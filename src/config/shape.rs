//! Checks of a configuration's shape that need more than one key or more than one file:
//! ranges, names, references between files, and what must be unique across pipelines.
//! Nothing here looks at the machine (files, models, GStreamer); that is the preflight's.
//!
//! Each check pushes every problem it finds; nothing returns early, so one run of
//! `visiond check` lists all that needs fixing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::broker::{BrokerConfig, KafkaBroker, MqttAddress, MqttBroker};
use super::daemon::{DaemonConfig, HttpConfig};
use super::error::{ConfigError, FileErrors};
use super::paths;
use super::pipeline::*;
use super::tree::Config;

pub fn check(config: &Config, errors: &mut Vec<ConfigError>, warnings: &mut Vec<ConfigError>) {
    let daemon_file = paths::display(&config.file);
    check_daemon(
        &config.daemon,
        &mut FileErrors {
            file: &daemon_file,
            errors,
        },
    );
    let mut seen = Seen::default();
    for pipeline in &config.pipelines {
        let file = paths::display(&pipeline.file);
        let mut file_errors = FileErrors {
            file: &file,
            errors,
        };
        check_pipeline(
            &pipeline.config,
            &config.daemon,
            &daemon_file,
            &mut file_errors,
        );
        seen.record(&pipeline.config, &file, &config.daemon, &mut file_errors);
    }
    if let Some(warning) = rtsp_exposure(config) {
        warnings.push(ConfigError {
            file: daemon_file.clone(),
            key: "rtsp.address".into(),
            message: warning,
        });
    }
    for (name, broker) in &config.daemon.brokers {
        let used = config.pipelines.iter().any(|p| {
            p.config
                .metadata
                .iter()
                .any(|item| item.broker() == Some(name.as_str()))
        });
        if !used && !broker.carries_events() {
            warnings.push(ConfigError {
                file: daemon_file.clone(),
                key: format!("brokers.{name}"),
                message: "no pipeline publishes here and `events` is off; it will not be connected"
                    .into(),
            });
        }
    }
    for name in config.daemon.models.keys() {
        let used = config
            .pipelines
            .iter()
            .any(|p| p.config.model.name() == Some(name));
        if !used {
            warnings.push(ConfigError {
                file: daemon_file.clone(),
                key: format!("models.{name}"),
                message: "no pipeline uses this model; it will not be loaded".into(),
            });
        }
    }
}

fn check_daemon(daemon: &DaemonConfig, errors: &mut FileErrors<'_>) {
    let outputs = &daemon.outputs;
    if outputs.retry_initial_ms == 0 {
        errors.push("outputs.retry_initial_ms", "must be at least 1");
    }
    if outputs.retry_max_ms < outputs.retry_initial_ms {
        errors.push(
            "outputs.retry_max_ms",
            format!(
                "must not be below retry_initial_ms ({})",
                outputs.retry_initial_ms
            ),
        );
    }
    check_http(&daemon.http, errors);
    let http_port = daemon.http.listen.port();
    if http_port != 0 && http_port == daemon.rtsp.port {
        errors.push(
            "rtsp.port",
            format!("port {http_port} is also used by http.listen"),
        );
    }
    if let Some(auth) = &daemon.rtsp.auth {
        check_env_name("rtsp.auth.password_env", &auth.password_env, errors);
    }
    if !(1..=MAX_HTTP_CONNECTIONS).contains(&daemon.rtsp.max_clients) {
        errors.push(
            "rtsp.max_clients",
            format!("must be between 1 and {MAX_HTTP_CONNECTIONS}"),
        );
    }
    if daemon.rtsp.setup_timeout_ms < MIN_HTTP_TIMEOUT_MS {
        errors.push(
            "rtsp.setup_timeout_ms",
            format!("must be at least {MIN_HTTP_TIMEOUT_MS}"),
        );
    }
    check_brokers(daemon, errors);
    if daemon.models.contains_key(NO_MODEL) || daemon.declared_models.contains(NO_MODEL) {
        errors.push(
            format!("models.{NO_MODEL}"),
            format!("'{NO_MODEL}' is reserved for pipelines without inference; pick another name"),
        );
    }
}

/// Shorter would cut off ordinary clients on a slow link.
const MIN_HTTP_TIMEOUT_MS: u64 = 100;
/// More than a process's usual descriptor limit is a typo.
const MAX_HTTP_CONNECTIONS: usize = 65_536;

fn check_http(http: &HttpConfig, errors: &mut FileErrors<'_>) {
    if !(1..=MAX_HTTP_CONNECTIONS).contains(&http.max_connections) {
        errors.push(
            "http.max_connections",
            format!("must be between 1 and {MAX_HTTP_CONNECTIONS}"),
        );
    }
    for (key, value) in [
        ("http.header_timeout_ms", http.header_timeout_ms),
        ("http.idle_timeout_ms", http.idle_timeout_ms),
    ] {
        if value < MIN_HTTP_TIMEOUT_MS {
            errors.push(key, format!("must be at least {MIN_HTTP_TIMEOUT_MS}"));
        }
    }
    if let Some(hosts) = &http.allowed_hosts {
        if hosts.is_empty() {
            errors.push(
                "http.allowed_hosts",
                "lists no host, so every request would be refused; list the names clients use (e.g. [\"127.0.0.1\", \"localhost\"]) or leave it out",
            );
        }
        for (index, host) in hosts.iter().enumerate() {
            let valid = !host.is_empty()
                && host.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']')
                });
            if !valid {
                errors.push(
                    format!("http.allowed_hosts[{index}]"),
                    format!(
                        "'{}' is not a host name or address, with or without :port",
                        super::limits::shown(host)
                    ),
                );
            }
        }
    }
}

/// Why an RTSP server that anyone on the network can watch is probably not what was meant:
/// it serves every mount without authentication beyond loopback (`rtsp.address` defaults to
/// every interface). Only when a pipeline publishes over RTSP: otherwise no server starts.
fn rtsp_exposure(config: &Config) -> Option<String> {
    let rtsp = &config.daemon.rtsp;
    let publishes = config.pipelines.iter().any(|p| {
        p.config
            .sinks
            .iter()
            .any(|s| matches!(s, SinkConfig::Rtsp(_)))
    });
    if !publishes || rtsp.auth.is_some() || rtsp.address.is_loopback() {
        return None;
    }
    let reach = if rtsp.address.is_unspecified() {
        "every interface"
    } else {
        "an address beyond loopback"
    };
    Some(format!(
        "the RTSP server listens on {} ({reach}) without authentication: anyone who can reach this machine can watch every mount; set rtsp.auth, or rtsp.address: 127.0.0.1 to keep it on this machine",
        rtsp.address
    ))
}

/// Whether `name` can be an environment variable's name (what `password_env` keys hold).
pub fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_env_name(key: &str, name: &str, errors: &mut FileErrors<'_>) {
    if !is_env_name(name) {
        errors.push(key, format!("'{name}' is not an environment variable name"));
    }
}

fn check_pipeline(
    pipeline: &PipelineConfig,
    daemon: &DaemonConfig,
    daemon_file: &str,
    errors: &mut FileErrors<'_>,
) {
    let name = &pipeline.name;
    super::limits::check_pipeline(pipeline, errors);
    let valid_name = name.chars().count() > super::limits::MAX_NAME
        || !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid_name {
        errors.push(
            "name",
            format!(
                "'{}' is not a valid pipeline name: use letters, digits, '-', '_' and '.'",
                super::limits::shown(name)
            ),
        );
    }
    if let ModelRef::Named(model) = &pipeline.model
        && !daemon.declared_models.contains(model)
    {
        let defined: Vec<&str> = daemon.declared_models.iter().map(String::as_str).collect();
        errors.push(
            "model",
            format!(
                "model '{model}' is not defined in {daemon_file} (defined: {}; or '{NO_MODEL}' for no inference)",
                if defined.is_empty() { "none".to_string() } else { defined.join(", ") }
            ),
        );
    }
    check_source_options(&pipeline.source, errors);
    if pipeline.queue.capacity == 0 {
        errors.push("queue.capacity", "must be at least 1");
    }
    check_overlay(&pipeline.overlay, errors);
    if pipeline.encoder.keyframe_interval == 0 {
        errors.push("encoder.keyframe_interval", "must be at least 1 frame");
    }
    if pipeline.encoder.bitrate_kbps == 0 {
        errors.push("encoder.bitrate_kbps", "must be positive");
    }
    check_encoder_format(&pipeline.encoder, errors);
    if pipeline.sinks.is_empty() && pipeline.metadata.is_empty() {
        errors.push(
            "sinks",
            "the pipeline has no sinks and no metadata, so its results would go nowhere",
        );
    }
    for (index, sink) in pipeline.sinks.iter().enumerate() {
        check_sink(
            &format!("sinks[{index}].{}", sink.kind()),
            sink,
            pipeline,
            errors,
        );
    }
    for (index, item) in pipeline.metadata.iter().enumerate() {
        let key = format!("metadata[{index}].{}", item.kind());
        match item {
            MetadataConfig::Jsonl(jsonl) => {
                if jsonl.path.is_some() == jsonl.stdout {
                    errors.push(key.as_str(), "set exactly one of `path` and `stdout: true`");
                }
            }
            MetadataConfig::Mqtt(mqtt) => {
                if mqtt.qos > 1 {
                    errors.push(
                        format!("{key}.qos"),
                        format!(
                            "qos {} is not offered; use 0 (at most once) or 1 (at least once: kept until the broker acknowledges it)",
                            mqtt.qos
                        ),
                    );
                }
                if let Some(problem) = super::template::mqtt_topic_problem(&mqtt.topic) {
                    errors.push(format!("{key}.topic"), problem);
                }
            }
            MetadataConfig::Kafka(kafka) => {
                if let Some(problem) = super::template::kafka_topic_problem(&kafka.topic) {
                    errors.push(format!("{key}.topic"), problem);
                }
                if let Err(problem) = super::template::Template::parse(&kafka.key) {
                    errors.push(format!("{key}.key"), problem);
                }
            }
        }
        if let Some(broker) = item.broker() {
            check_broker_reference(&key, item.kind(), broker, daemon, daemon_file, errors);
        }
        if let (Some(sampling), Some(buffer)) = (item.sampling(), item.buffer()) {
            check_sampling(&key, sampling, buffer, errors);
            if sampling.on_change && pipeline.model == ModelRef::None {
                errors.push(
                    format!("{key}.on_change"),
                    "compares the best class of a classification model, and this pipeline has none (model: none)",
                );
            }
        }
    }
}

/// A published sink names a broker of the daemon file, of its own kind.
fn check_broker_reference(
    key: &str,
    kind: &str,
    broker: &str,
    daemon: &DaemonConfig,
    daemon_file: &str,
    errors: &mut FileErrors<'_>,
) {
    match daemon.brokers.get(broker) {
        Some(found) if found.kind() != kind => errors.push(
            format!("{key}.broker"),
            format!(
                "broker '{broker}' in {daemon_file} is of kind {}, not {kind}",
                found.kind()
            ),
        ),
        Some(_) => {}
        // Declared but invalid: reported where it is declared.
        None if daemon.declared_brokers.contains(broker) => {}
        None => {
            let defined: Vec<&str> = daemon
                .brokers
                .iter()
                .filter(|(_, b)| b.kind() == kind)
                .map(|(name, _)| name.as_str())
                .collect();
            errors.push(
                format!("{key}.broker"),
                format!(
                    "broker '{}' is not defined under `brokers` in {daemon_file} ({kind} brokers defined: {})",
                    super::limits::shown(broker),
                    if defined.is_empty() { "none".to_string() } else { defined.join(", ") }
                ),
            );
        }
    }
}

/// Largest spool a sink may ask for: a million results is hours of one camera's frames, and
/// a bound on the memory a typo can take.
const MAX_BUFFER: usize = 1_000_000;

fn check_sampling(
    key: &str,
    sampling: super::pipeline::Sampling,
    buffer: usize,
    errors: &mut FileErrors<'_>,
) {
    if sampling.every == 0 {
        errors.push(format!("{key}.every"), "must be at least 1 (every frame)");
    }
    if let Some(hz) = sampling.max_hz
        && !(hz > 0.0 && hz.is_finite())
    {
        errors.push(
            format!("{key}.max_hz"),
            "must be a positive number of messages per second",
        );
    }
    if !(1..=MAX_BUFFER).contains(&buffer) {
        errors.push(
            format!("{key}.buffer"),
            format!("must be between 1 and {MAX_BUFFER} messages"),
        );
    }
}

/// Every broker's own settings: addresses, names, credentials and TLS files that go together.
fn check_brokers(daemon: &DaemonConfig, errors: &mut FileErrors<'_>) {
    if let Some(name) = &daemon.name
        && !is_plain_name(name)
    {
        errors.push(
            "name",
            format!(
                "'{}' is not a valid daemon name: use letters, digits, '-', '_' and '.' (it goes into topics)",
                super::limits::shown(name)
            ),
        );
    }
    for (name, broker) in &daemon.brokers {
        let key = format!("brokers.{name}");
        if !is_plain_name(name) {
            errors.push(
                key.as_str(),
                "a broker's name uses letters, digits, '-', '_' and '.'",
            );
        }
        let key = format!("{key}.{}", broker.kind());
        let reconnect = match broker {
            BrokerConfig::Mqtt(mqtt) => {
                check_mqtt_broker(&key, mqtt, errors);
                mqtt.reconnect
            }
            BrokerConfig::Kafka(kafka) => {
                check_kafka_broker(&key, kafka, errors);
                kafka.reconnect
            }
        };
        if reconnect.initial_ms == 0 {
            errors.push(format!("{key}.reconnect.initial_ms"), "must be at least 1");
        }
        if reconnect.max_ms < reconnect.initial_ms {
            errors.push(
                format!("{key}.reconnect.max_ms"),
                format!("must not be below initial_ms ({})", reconnect.initial_ms),
            );
        }
    }
}

fn check_mqtt_broker(key: &str, mqtt: &MqttBroker, errors: &mut FileErrors<'_>) {
    let tls = match MqttAddress::parse(&mqtt.url) {
        Ok(address) => address.tls,
        Err(problem) => {
            errors.push(format!("{key}.url"), problem);
            true
        }
    };
    if let Some(variable) = &mqtt.password_env {
        check_env_name(&format!("{key}.password_env"), variable, errors);
        if mqtt.username.is_none() {
            errors.push(
                format!("{key}.password_env"),
                "a password needs a `username` beside it",
            );
        }
    }
    if mqtt.client_cert.is_some() != mqtt.client_key.is_some() {
        errors.push(
            format!("{key}.client_cert"),
            "set both `client_cert` and `client_key`, or neither",
        );
    }
    for (field, set) in [
        ("ca_file", mqtt.ca_file.is_some()),
        ("client_cert", mqtt.client_cert.is_some()),
        ("client_key", mqtt.client_key.is_some()),
    ] {
        if set && !tls {
            errors.push(
                format!("{key}.{field}"),
                "is for TLS connections: use an mqtts:// URL",
            );
        }
    }
    if !(5..=65_535).contains(&mqtt.keep_alive_s) {
        errors.push(
            format!("{key}.keep_alive_s"),
            "must be between 5 and 65535 seconds",
        );
    }
    if mqtt.inflight == 0 {
        errors.push(format!("{key}.inflight"), "must be at least 1");
    }
    if let Some(client_id) = &mqtt.client_id
        && (client_id.is_empty() || client_id.len() > 256)
    {
        errors.push(
            format!("{key}.client_id"),
            "must be 1 to 256 characters long",
        );
    }
    if let Some(problem) = super::template::mqtt_topic_problem(&format!("{}/x", mqtt.topic_prefix))
    {
        errors.push(format!("{key}.topic_prefix"), problem);
    }
}

fn check_kafka_broker(key: &str, kafka: &KafkaBroker, errors: &mut FileErrors<'_>) {
    let servers: Vec<&str> = kafka.bootstrap.split(',').map(str::trim).collect();
    for server in servers {
        if let Err(problem) = super::broker::split_host_port(server, 9092) {
            errors.push(
                format!("{key}.bootstrap"),
                format!("{problem}; expected host:port[,host:port...]"),
            );
        }
    }
    if kafka.inflight == 0 {
        errors.push(format!("{key}.inflight"), "must be at least 1");
    }
    if let Some(problem) = super::template::kafka_topic_problem(&kafka.events_topic) {
        errors.push(format!("{key}.events_topic"), problem);
    }
    for name in kafka.properties.keys() {
        if OWN_KAFKA_PROPERTIES.contains(&name.as_str()) {
            errors.push(
                format!("{key}.properties.{name}"),
                "is set by visiond itself (from bootstrap, client_id and reconnect)",
            );
        }
    }
}

/// librdkafka settings visiond sets from its own keys.
const OWN_KAFKA_PROPERTIES: [&str; 5] = [
    "bootstrap.servers",
    "client.id",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "message.timeout.ms",
];

/// Letters, digits, `-`, `_` and `.`: names that go into topics, labels and file names.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= super::limits::MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The options every source kind takes (the kind itself was checked when it was parsed).
fn check_source_options(source: &super::source::SourceConfig, errors: &mut FileErrors<'_>) {
    if let Some(credentials) = &source.credentials {
        check_env_name(
            "source.credentials.password_env",
            &credentials.password_env,
            errors,
        );
    }
    if let Some(fps) = source.fps
        && !(fps > 0.0 && fps.is_finite())
    {
        errors.push(
            "source.fps",
            "must be a positive number of frames per second",
        );
    }
    if let Some(max_size) = source.max_size
        && max_size < 16
    {
        errors.push("source.max_size", "must be at least 16 pixels");
    }
    let reconnect = &source.reconnect;
    if reconnect.initial_ms == 0 {
        errors.push("source.reconnect.initial_ms", "must be at least 1");
    }
    if reconnect.max_ms < reconnect.initial_ms {
        errors.push(
            "source.reconnect.max_ms",
            format!("must not be below initial_ms ({})", reconnect.initial_ms),
        );
    }
    if !(0.0..1.0).contains(&reconnect.jitter) {
        errors.push("source.reconnect.jitter", "must be a fraction in [0, 1)");
    }
}

/// 4:4:4 only with the profile that carries it, and that profile only with 4:4:4 asked for.
fn check_encoder_format(encoder: &EncoderConfig, errors: &mut FileErrors<'_>) {
    let is_444 = encoder.format == Some(PixelFormat::Y444);
    match encoder.profile {
        Some(H264Profile::High444) | None => {}
        Some(profile) if is_444 => errors.push(
            "encoder.format",
            format!(
                "y444 needs profile high-4:4:4 (profile is {}); 4:2:0 (i420, nv12) plays everywhere",
                profile.caps_name()
            ),
        ),
        Some(_) => {}
    }
    if encoder.profile == Some(H264Profile::High444) && !is_444 {
        errors.push(
            "encoder.profile",
            "high-4:4:4 is for format y444; many decoders refuse it (use high, main or baseline)",
        );
    }
}

fn check_overlay(overlay: &OverlayConfig, errors: &mut FileErrors<'_>) {
    if !(0.0..=1.0).contains(&overlay.alpha) {
        errors.push("overlay.alpha", "must be between 0 and 1");
    }
    if let DepthRange::Fixed([lo, hi]) = overlay.range
        && lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less)
    {
        errors.push(
            "overlay.range.fixed",
            format!("lower bound {lo} must be below upper bound {hi}"),
        );
    }
    if overlay.smoothing_frames == 0 {
        errors.push("overlay.smoothing_frames", "must be at least 1");
    }
    if overlay.top_k == 0 {
        errors.push("overlay.top_k", "must be at least 1");
    }
    if !(0.0..=1.0).contains(&overlay.min_score) {
        errors.push("overlay.min_score", "must be between 0 and 1");
    }
}

fn check_sink(key: &str, sink: &SinkConfig, pipeline: &PipelineConfig, errors: &mut FileErrors) {
    match sink {
        SinkConfig::Rtsp(rtsp) => {
            let valid = rtsp.mount.starts_with('/')
                && rtsp.mount.len() > 1
                && !rtsp.mount.contains(char::is_whitespace);
            if !valid {
                errors.push(
                    format!("{key}.mount"),
                    format!(
                        "'{}' is not a mount path; expected e.g. /front-door",
                        super::limits::shown(&rtsp.mount)
                    ),
                );
            }
        }
        SinkConfig::File(file) => {
            if file.format.is_none() {
                let extension = file.path.extension().and_then(|e| e.to_str());
                if !matches!(extension, Some("mp4" | "mkv")) {
                    errors.push(
                        format!("{key}.path"),
                        "cannot tell the container from the extension: use .mp4 or .mkv, or set `format`",
                    );
                }
            }
            if file.segment_s == Some(0) {
                errors.push(format!("{key}.segment_s"), "must be at least 1 second");
            }
            check_retention(key, file, errors);
        }
        SinkConfig::Udp(udp) => {
            if udp.host.trim().is_empty() {
                errors.push(format!("{key}.host"), "must not be empty");
            }
            if udp.port == 0 {
                errors.push(format!("{key}.port"), "must be a port between 1 and 65535");
            }
        }
        SinkConfig::Launch(launch) => {
            if launch.pipeline.trim().is_empty() {
                errors.push(format!("{key}.pipeline"), "must not be empty");
            }
        }
        SinkConfig::Display(_) => {}
        SinkConfig::Depth16(depth) => {
            if depth.path.extension().and_then(|e| e.to_str()) != Some("mkv") {
                errors.push(
                    format!("{key}.path"),
                    "16-bit depth is written as Matroska: use a .mkv path",
                );
            }
            if pipeline.model == ModelRef::None {
                errors.push(key, "needs a depth model (the pipeline's model is 'none')");
            }
        }
    }
}

/// A recording's retention (`max_age`, `max_bytes`) deletes old segments, so it needs
/// segments; a segmented recording's file name may hold one counter, which splitmuxsink and
/// the segment names fill in.
fn check_retention(key: &str, file: &FileSink, errors: &mut FileErrors) {
    if file.max_age.is_some_and(|age| age.is_zero()) {
        errors.push(format!("{key}.max_age"), "must be more than 0");
    }
    if file.max_bytes == Some(0) {
        errors.push(format!("{key}.max_bytes"), "must be at least 1");
    }
    if file.segment_s.is_none() {
        for (name, set) in [
            ("max_age", file.max_age.is_some()),
            ("max_bytes", file.max_bytes.is_some()),
        ] {
            if set {
                errors.push(
                    format!("{key}.{name}"),
                    "deletes old segments, so it needs `segment_s` (a recording without segments is one file, which is never deleted)",
                );
            }
        }
        return;
    }
    let name = file
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if segment_counter(&name).is_none() {
        errors.push(
            format!("{key}.path"),
            format!(
                "'{}' may hold one segment counter, %d or %0Nd (e.g. %05d), and no other '%'",
                super::limits::shown(&name)
            ),
        );
    }
}

/// Names that must be unique across all pipelines, with where each was first seen.
#[derive(Default)]
struct Seen {
    names: HashMap<String, String>,
    mounts: HashMap<String, String>,
    udp: HashMap<(String, u16), String>,
    outputs: BTreeMap<std::path::PathBuf, String>,
}

impl Seen {
    fn record(
        &mut self,
        pipeline: &PipelineConfig,
        file: &str,
        daemon: &DaemonConfig,
        errors: &mut FileErrors<'_>,
    ) {
        if let Some(first) = self.names.get(&pipeline.name) {
            errors.push(
                "name",
                format!(
                    "pipeline name '{}' is already used by {first}",
                    pipeline.name
                ),
            );
        } else {
            self.names.insert(pipeline.name.clone(), file.to_string());
        }
        for (index, sink) in pipeline.sinks.iter().enumerate() {
            match sink {
                SinkConfig::Rtsp(rtsp) => {
                    let key = format!("sinks[{index}].rtsp.mount");
                    match self.mounts.get(&rtsp.mount) {
                        Some(first) => errors.push(
                            key,
                            format!("mount {} is already served by {first}", rtsp.mount),
                        ),
                        None => {
                            self.mounts
                                .insert(rtsp.mount.clone(), format!("{file} {key}"));
                        }
                    }
                }
                SinkConfig::Udp(udp) => {
                    let key = format!("sinks[{index}].udp.port");
                    let target = (udp.host.clone(), udp.port);
                    match self.udp.get(&target) {
                        Some(first) => errors.push(
                            key.as_str(),
                            format!("{}:{} is already a target of {first}", udp.host, udp.port),
                        ),
                        None => {
                            self.udp.insert(target, format!("{file} {key}"));
                        }
                    }
                    if is_local(&udp.host)
                        && (udp.port == daemon.rtsp.port || udp.port == daemon.http.listen.port())
                    {
                        errors.push(
                            key,
                            format!(
                                "port {} is used by the daemon's own RTSP or HTTP server",
                                udp.port
                            ),
                        );
                    }
                }
                SinkConfig::File(sink) => self.output(
                    &sink.path,
                    format!("sinks[{index}].file.path"),
                    file,
                    errors,
                ),
                SinkConfig::Depth16(sink) => self.output(
                    &sink.path,
                    format!("sinks[{index}].depth16.path"),
                    file,
                    errors,
                ),
                _ => {}
            }
        }
        for (index, item) in pipeline.metadata.iter().enumerate() {
            if let MetadataConfig::Jsonl(jsonl) = item
                && let Some(path) = &jsonl.path
            {
                self.output(path, format!("metadata[{index}].jsonl.path"), file, errors);
            }
        }
    }

    fn output(&mut self, path: &Path, key: String, file: &str, errors: &mut FileErrors<'_>) {
        match self.outputs.get(path) {
            Some(first) => errors.push(
                key,
                format!("{} is already written by {first}", path.display()),
            ),
            None => {
                self.outputs
                    .insert(path.to_path_buf(), format!("{file} {key}"));
            }
        }
    }
}

fn is_local(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "::1" | "0.0.0.0")
}
