//! The first of the engine's three steps (plan, build, spawn): every fact about a pipeline is
//! derived here, once, from its configuration and its model's task. Building and spawning only
//! read the plan.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::PipelineError;
use super::output_stage::RetryPolicy;
use super::worker::BatchPolicy;
use crate::config::{
    Config, MetadataConfig, ModelRef, PipelineConfig, RtspServerConfig, SinkConfig, SourceConfig,
    Task, WhenFull,
};
use crate::media::output::OutputSettings;
use crate::runtime::{Annotation, LoadError};

/// The whole engine's plan.
pub struct Plan {
    /// One per pipeline of the configuration, in its order: the plan, or why it cannot run.
    pub pipelines: Vec<Result<PipelinePlan, PipelineFailure>>,
    /// The batching policy of each model in use, by name.
    pub models: BTreeMap<String, BatchPolicy>,
    /// The RTSP server's settings, when some pipeline publishes over RTSP.
    pub rtsp: Option<RtspServerConfig>,
    /// How long shutdown waits for queued frames and files.
    pub grace: Duration,
}

/// A pipeline that will not run, with what the control plane shows of it.
pub struct PipelineFailure {
    pub name: String,
    pub model: ModelRef,
    pub error: Box<PipelineError>,
}

/// Everything the engine needs to know to build and run one pipeline.
#[derive(Debug, Clone)]
pub struct PipelinePlan {
    /// Position in the configuration; frames carry it to find their way home.
    pub index: usize,
    pub name: String,
    pub source: SourceConfig,
    /// A live source (camera, stream, endless test pattern) rather than a finite one.
    pub live: bool,
    /// Capacity of every bounded hop of the pipeline.
    pub capacity: usize,
    /// What every hop does when full: the configured policy, else `drop_oldest` for live
    /// sources (latency stays bounded) and `block` for finite ones (nothing is lost).
    pub when_full: WhenFull,
    /// The model's name, and the task it computes; `None` for `model: none`.
    pub model: Option<(String, Task)>,
    /// How the model's results are drawn onto this pipeline's frames.
    pub annotation: Annotation,
    pub output: OutputSettings,
    /// How a failed output or recording is retried.
    pub retry: RetryPolicy,
    pub metadata: Vec<MetadataConfig>,
}

impl PipelinePlan {
    pub fn model_ref(&self) -> ModelRef {
        self.model
            .as_ref()
            .map_or(ModelRef::None, |(name, _)| ModelRef::Named(name.clone()))
    }
}

/// The names of the models some pipeline uses: the ones to load.
pub fn models_in_use(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config
        .pipelines
        .iter()
        .filter_map(|p| p.config.model.name().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

impl Plan {
    /// Plans every pipeline of `config`. `tasks` says, per model in use, what it computes or
    /// why it could not be loaded.
    pub fn new(config: &Config, tasks: &BTreeMap<String, Result<Task, Arc<LoadError>>>) -> Self {
        let outputs = config.daemon.outputs;
        let retry = RetryPolicy {
            initial: Duration::from_millis(outputs.retry_initial_ms),
            max: Duration::from_millis(outputs.retry_max_ms),
        };
        let pipelines = config
            .pipelines
            .iter()
            .enumerate()
            .map(|(index, file)| {
                plan_pipeline(index, &file.config, tasks, retry).map_err(|error| PipelineFailure {
                    name: file.config.name.clone(),
                    model: file.config.model.clone(),
                    error: Box::new(error),
                })
            })
            .collect();
        let models = tasks
            .keys()
            .filter_map(|name| {
                let batch = config.daemon.models.get(name)?.batch;
                Some((
                    name.clone(),
                    BatchPolicy {
                        max_size: batch.max_size,
                        max_wait: Duration::from_millis(batch.max_wait_ms),
                    },
                ))
            })
            .collect();
        let wants_rtsp = config.pipelines.iter().any(|p| {
            p.config
                .sinks
                .iter()
                .any(|s| matches!(s, SinkConfig::Rtsp(_)))
        });
        Self {
            pipelines,
            models,
            rtsp: wants_rtsp.then(|| config.daemon.rtsp.clone()),
            grace: Duration::from_millis(config.daemon.shutdown.grace_ms),
        }
    }
}

fn plan_pipeline(
    index: usize,
    pipeline: &PipelineConfig,
    tasks: &BTreeMap<String, Result<Task, Arc<LoadError>>>,
    retry: RetryPolicy,
) -> Result<PipelinePlan, PipelineError> {
    let model = match &pipeline.model {
        ModelRef::None => None,
        ModelRef::Named(name) => match tasks.get(name) {
            Some(Ok(task)) => Some((name.clone(), *task)),
            Some(Err(error)) => {
                return Err(PipelineError::ModelUnavailable {
                    model: name.clone(),
                    error: error.clone(),
                });
            }
            None => return Err(PipelineError::ModelNotLoaded(name.clone())),
        },
    };
    let task = model.as_ref().map(|(_, task)| *task);
    let raw_depth = pipeline
        .sinks
        .iter()
        .any(|s| matches!(s, SinkConfig::Depth16(_)));
    if raw_depth && task != Some(Task::Depth) {
        return Err(PipelineError::Depth16WithoutDepth {
            model: pipeline.model.to_string(),
        });
    }
    let live = pipeline.source.is_live();
    let when_full = pipeline.queue.when_full.unwrap_or(if live {
        WhenFull::DropOldest
    } else {
        WhenFull::Block
    });
    // Classification frames are published as they are, with their label drawn on them.
    let draw_label = task == Some(Task::Classification);
    Ok(PipelinePlan {
        index,
        name: pipeline.name.clone(),
        source: pipeline.source.clone(),
        live,
        capacity: pipeline.queue.capacity.max(1),
        when_full,
        model,
        annotation: Annotation {
            overlay: pipeline.overlay.clone(),
            raw_depth,
        },
        output: OutputSettings::new(pipeline, live, when_full, draw_label),
        retry,
        metadata: pipeline.metadata.clone(),
    })
}
