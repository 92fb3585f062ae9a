//! The GStreamer elements and gst-launch fragments pipelines name, against this machine's
//! registry.

use crate::config::{FileErrors, PipelineConfig, SinkConfig, SourceKind};
use crate::media::registry::{self, ElementProblem};

/// The registry, or why GStreamer could not start (then every check says so once per key).
pub struct Registry {
    failure: Option<String>,
}

impl Registry {
    pub fn open() -> Self {
        Self {
            failure: registry::init().err().map(|error| error.to_string()),
        }
    }

    pub fn check_pipeline(&self, pipeline: &PipelineConfig, errors: &mut FileErrors<'_>) {
        if let SourceKind::Launch(launch) = &pipeline.source.kind {
            self.check_launch("source.launch", launch, errors);
        }
        self.check_encoder(pipeline, errors);
        for (index, sink) in pipeline.sinks.iter().enumerate() {
            if let SinkConfig::Launch(launch) = sink {
                self.check_launch(
                    &format!("sinks[{index}].launch.pipeline"),
                    &launch.pipeline,
                    errors,
                );
            }
        }
    }

    fn check_encoder(&self, pipeline: &PipelineConfig, errors: &mut FileErrors<'_>) {
        let encoder = &pipeline.encoder;
        if let Some(failure) = &self.failure {
            errors.push("encoder.element", failure.clone());
            return;
        }
        // Metadata-only pipelines encode nothing.
        if !SinkConfig::any_shows_pictures(&pipeline.sinks) {
            return;
        }
        let Some(element) = registry::resolve_encoder(&encoder.element) else {
            errors.push(
                "encoder.element",
                format!(
                    "auto found no H.264 encoder on this machine (looked for {}); install gstreamer1.0-plugins-ugly for x264enc",
                    registry::AUTO_ENCODERS.join(", ")
                ),
            );
            return;
        };
        let properties = encoder.properties.keys().map(String::as_str);
        match registry::check_element(&element, properties) {
            Ok(()) => {
                if let Err(message) = registry::encoder_input(&element, encoder.format) {
                    errors.push("encoder.format", message);
                }
                if let Some(profile) = encoder.profile
                    && !registry::encoder_has_profile(&element, profile)
                {
                    errors.push(
                        "encoder.profile",
                        format!(
                            "element '{element}' cannot produce profile {}",
                            profile.caps_name()
                        ),
                    );
                }
            }
            Err(ElementProblem::Missing) => errors.push(
                "encoder.element",
                format!(
                    "no GStreamer element '{element}' on this machine (gst-inspect-1.0 {element} tells which plugin provides it)"
                ),
            ),
            Err(ElementProblem::NoSuchProperties(missing)) => {
                for property in missing {
                    errors.push(
                        format!("encoder.properties.{property}"),
                        format!("element '{element}' has no property '{property}'"),
                    );
                }
            }
        }
    }

    fn check_launch(&self, key: &str, description: &str, errors: &mut FileErrors<'_>) {
        // An empty fragment is a shape error, already reported.
        if self.failure.is_some() || description.trim().is_empty() {
            return;
        }
        if let Err(error) = registry::check_launch(description) {
            errors.push(key, format!("GStreamer {error}"));
        }
    }
}
