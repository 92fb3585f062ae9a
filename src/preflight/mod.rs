//! Checks that probe the machine before anything starts: can it run what the configuration
//! describes? Model folders and the Hugging Face cache (through the loader's own inspection,
//! never downloading), the CUDA devices models ask for, files, V4L2 devices and writable
//! directories, the environment variables holding passwords, and the GStreamer elements and
//! gst-launch fragments the pipelines name.
//!
//! [`load`] is what `visiond check` and `visiond run` use: the configuration read and
//! shape-checked by `crate::config`, then these checks, every error of both reported at once.

pub mod files;
mod gst;
pub mod limits;
mod models;
mod secrets;

use std::path::Path;

use crate::config::{Config, ConfigError, ConfigErrors, FileErrors, Overlay, paths};

/// One line per model for `visiond check`: device, dtype, TF32 and CUDA graphs as they will be
/// on this machine.
pub fn model_summaries(config: &Config) -> Vec<String> {
    config
        .daemon
        .models
        .iter()
        .map(|(name, model)| models::summary(name, model))
        .collect()
}

/// `visiond check --probe`: asks each served model's server whether the model is ready and
/// fits its processor. Prints one line per served model that is; returns the errors of the
/// others, each naming the daemon file and the model's key.
pub fn probe(config: &Config) -> Vec<ConfigError> {
    let file = paths::display(&config.file);
    let mut failures = Vec::new();
    for (name, model) in &config.daemon.models {
        let Some(remote) = &model.remote else {
            continue;
        };
        match crate::runtime::remote::probe(model, remote) {
            Ok(line) => println!("  model {name}: {line}"),
            Err(message) => failures.push(ConfigError {
                file: file.clone(),
                key: format!("models.{name}.remote"),
                message,
            }),
        }
    }
    failures
}

/// Reads `file`, checks its shape and what it needs of this machine; every error at once.
pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
    load_with(file, &Overlay::new())
}

/// [`load`] with pipeline files changed by `overlay` (a change validated before it is written).
pub fn load_with(file: &Path, overlay: &Overlay) -> Result<Config, ConfigErrors> {
    let mut reading = Config::read_with(file, overlay);
    if let Some(config) = &reading.config {
        check(config, &mut reading.errors, &mut reading.warnings);
    }
    reading.finish()
}

/// Every machine check on a configuration that was read.
pub fn check(config: &Config, errors: &mut Vec<ConfigError>, warnings: &mut Vec<ConfigError>) {
    let daemon_file = paths::display(&config.file);
    let mut daemon_errors = FileErrors {
        file: &daemon_file,
        errors,
    };
    for (name, model) in &config.daemon.models {
        models::check(name, model, &mut daemon_errors, warnings);
    }
    secrets::check_daemon(config, &mut daemon_errors);
    for (name, broker) in &config.daemon.brokers {
        if let crate::config::BrokerConfig::Mqtt(mqtt) = broker {
            for (key, problem) in crate::publish::check_tls_files(mqtt) {
                daemon_errors.push(format!("brokers.{name}.mqtt.{key}"), problem);
            }
        }
    }
    if let Some(token_file) = &config.daemon.http.token_file
        && let Err(message) = files::read_token(token_file)
    {
        daemon_errors.push("http.token_file", message);
    }
    if let Some(token_file) = &config.daemon.http.view_token_file
        && let Err(message) = files::read_token(token_file)
    {
        daemon_errors.push("http.view_token_file", message);
    }
    let webrtc = &config.daemon.http.webrtc;
    if webrtc.max_viewers == 0 {
        daemon_errors.push(
            "http.webrtc.max_viewers",
            "must be at least 1 (each pipeline's live viewers at once)".to_string(),
        );
    }
    for (key, value, schemes) in [
        ("stun", &webrtc.stun, &["stun://"][..]),
        ("turn", &webrtc.turn, &["turn://", "turns://"][..]),
    ] {
        if let Some(value) = value
            && !schemes.iter().any(|scheme| value.starts_with(scheme))
        {
            let scheme = schemes[0];
            daemon_errors.push(
                format!("http.webrtc.{key}"),
                format!(
                    "{} is not a {scheme}host:port URL",
                    crate::config::redact::uri(value)
                ),
            );
        }
    }
    for (index, dir) in config.daemon.http.writes.dirs.iter().enumerate() {
        if !dir.is_dir() {
            daemon_errors.push(
                format!("http.writes.dirs[{index}]"),
                format!("{} is not a directory", dir.display()),
            );
        }
    }
    let listed: Vec<(&str, &crate::config::ModelConfig)> = config
        .daemon
        .models
        .iter()
        .map(|(name, model)| (name.as_str(), model))
        .collect();
    if let Some(message) = models::tf32_conflict(&listed) {
        warnings.push(ConfigError {
            file: daemon_file.clone(),
            key: "models".to_owned(),
            message,
        });
    }
    let gst = gst::Registry::open();
    for pipeline in &config.pipelines {
        let file = paths::display(&pipeline.file);
        let mut file_errors = FileErrors {
            file: &file,
            errors,
        };
        files::check_pipeline(&pipeline.config, &mut file_errors);
        secrets::check_pipeline(&pipeline.config, &mut file_errors);
        gst.check_pipeline(&pipeline.config, &mut file_errors);
    }
}
