//! The environment variables the configuration names for passwords (`password_env`): set
//! here, as `visiond run` will read them. Checked only where `run` reads them: the RTSP
//! server's when a pipeline publishes over RTSP, a camera's when its source is RTSP, a
//! broker's when it connects.

use crate::config::{BrokerConfig, Config, FileErrors, PipelineConfig, SinkConfig, is_env_name};

/// The RTSP server's password, read when the server starts.
pub fn check_daemon(config: &Config, errors: &mut FileErrors<'_>) {
    let publishes = config.pipelines.iter().any(|p| {
        p.config
            .sinks
            .iter()
            .any(|s| matches!(s, SinkConfig::Rtsp(_)))
    });
    if let Some(auth) = &config.daemon.rtsp.auth
        && publishes
    {
        check_variable("rtsp.auth.password_env", &auth.password_env, errors);
    }
    for (name, broker) in &config.daemon.brokers {
        if let BrokerConfig::Mqtt(mqtt) = broker
            && let Some(variable) = &mqtt.password_env
        {
            check_variable(
                &format!("brokers.{name}.mqtt.password_env"),
                variable,
                errors,
            );
        }
    }
}

/// A camera's password, read each time its source is opened.
pub fn check_pipeline(pipeline: &PipelineConfig, errors: &mut FileErrors<'_>) {
    if let Some(credentials) = &pipeline.source.credentials
        && pipeline.source.kind.is_rtsp()
    {
        check_variable(
            "source.credentials.password_env",
            &credentials.password_env,
            errors,
        );
    }
}

fn check_variable(key: &str, variable: &str, errors: &mut FileErrors<'_>) {
    // A name that cannot be one is a shape error, already reported.
    if !is_env_name(variable) {
        return;
    }
    // The same lookup `run` makes, so that the two never disagree.
    if crate::media::secret(variable, key).is_err() {
        errors.push(
            key,
            format!(
                "environment variable {variable} is not set (or not UTF-8); `visiond run` reads the password from it (under systemd: the unit's Environment= or EnvironmentFile=)"
            ),
        );
    }
}
