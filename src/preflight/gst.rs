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
        let properties = encoder.properties.keys().map(String::as_str);
        match registry::check_element(&encoder.element, properties) {
            Ok(()) => {}
            Err(ElementProblem::Missing) => errors.push(
                "encoder.element",
                format!(
                    "no GStreamer element '{}' on this machine (gst-inspect-1.0 {} tells which plugin provides it)",
                    encoder.element, encoder.element
                ),
            ),
            Err(ElementProblem::NoSuchProperties(missing)) => {
                for property in missing {
                    errors.push(
                        format!("encoder.properties.{property}"),
                        format!("element '{}' has no property '{property}'", encoder.element),
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
