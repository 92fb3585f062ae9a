//! The first of the engine's three steps (plan, build, spawn): every fact about a pipeline is
//! derived here, once, from its configuration and its model's task; and, for a reload, what a
//! new configuration changes compared with the one running. Building and spawning only read
//! the plan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::PipelineError;
use super::output_stage::RetryPolicy;
use super::worker::BatchPolicy;
use crate::config::{
    BatchConfig, Config, MetadataConfig, ModelConfig, ModelRef, PipelineConfig, SinkConfig,
    SourceConfig, Task, WhenFull,
};
use crate::media::output::OutputSettings;
use crate::runtime::{Annotation, LoadError};

/// A pipeline that will not run, with what the control plane shows of it.
pub struct PipelineFailure {
    pub name: String,
    pub model: ModelRef,
    pub error: Box<PipelineError>,
}

/// Everything the engine needs to know to build and run one pipeline.
#[derive(Debug, Clone)]
pub struct PipelinePlan {
    /// Unique for the engine's life (a reload never reuses one): frames carry it home.
    pub id: usize,
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

/// What each model in use computes, or why it could not be loaded.
pub type Tasks = BTreeMap<String, Result<Task, Arc<LoadError>>>;

impl PipelinePlan {
    /// Plans one pipeline; a model that did not load, or a sink its model cannot feed, is the
    /// pipeline's failure.
    pub fn new(
        id: usize,
        pipeline: &PipelineConfig,
        tasks: &Tasks,
        retry: RetryPolicy,
    ) -> Result<Self, PipelineFailure> {
        plan(id, pipeline, tasks, retry).map_err(|error| PipelineFailure {
            name: pipeline.name.clone(),
            model: pipeline.model.clone(),
            error: Box::new(error),
        })
    }

    pub fn model_ref(&self) -> ModelRef {
        self.model
            .as_ref()
            .map_or(ModelRef::None, |(name, _)| ModelRef::Named(name.clone()))
    }
}

fn plan(
    id: usize,
    pipeline: &PipelineConfig,
    tasks: &Tasks,
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
    for (index, item) in pipeline.metadata.iter().enumerate() {
        if item.sampling().is_some_and(|s| s.on_change) && task != Some(Task::Classification) {
            return Err(PipelineError::OnChangeWithoutLabels {
                index,
                kind: item.kind(),
                model: pipeline.model.to_string(),
            });
        }
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
        id,
        name: pipeline.name.clone(),
        source: pipeline.source.clone(),
        live,
        capacity: pipeline.queue.capacity.max(1),
        when_full,
        model,
        annotation: Annotation {
            overlay: pipeline.overlay.clone(),
            raw_depth,
            picture: SinkConfig::any_shows_pictures(&pipeline.sinks),
        },
        output: OutputSettings::new(pipeline, live, when_full, draw_label),
        retry,
        metadata: pipeline.metadata.clone(),
    })
}

/// How failed outputs are retried, from the daemon file's `outputs` section.
pub fn retry_policy(config: &Config) -> RetryPolicy {
    let outputs = config.daemon.outputs;
    RetryPolicy {
        initial: Duration::from_millis(outputs.retry_initial_ms),
        max: Duration::from_millis(outputs.retry_max_ms),
    }
}

/// A model's batching policy.
pub fn batch_policy(batch: &BatchConfig) -> BatchPolicy {
    BatchPolicy {
        max_size: batch.max_size,
        max_wait: Duration::from_millis(batch.max_wait_ms),
    }
}

/// The names of the models some pipeline uses: the ones to load.
pub fn models_in_use(config: &Config) -> BTreeSet<String> {
    config
        .pipelines
        .iter()
        .filter_map(|p| p.config.model.name().map(str::to_string))
        .collect()
}

/// What a new configuration changes compared with what runs: pipelines to stop, to start
/// (the new and the changed ones, which are stopped first), to leave alone; models to unload.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Pipelines whose file changed, whose model's definition did, or that had failed:
    /// restarted.
    pub changed: Vec<String>,
    /// Left running untouched: their frames keep flowing.
    pub unchanged: Vec<String>,
    /// Models whose definition changed (reloaded) or that no pipeline uses any more.
    pub unloaded_models: Vec<String>,
}

impl Changes {
    /// `running` is each pipeline's configuration as applied, `failed` those that are not
    /// running because they failed (a reload retries them), `models` each loaded model's.
    pub fn between(
        running: &BTreeMap<String, PipelineConfig>,
        failed: &BTreeSet<String>,
        models: &BTreeMap<String, ModelConfig>,
        new: &Config,
    ) -> Self {
        let used = models_in_use(new);
        let unloaded_models: Vec<String> = models
            .iter()
            .filter(|(name, old)| {
                !used.contains(*name) || new.daemon.models.get(*name) != Some(old)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut changes = Self {
            unloaded_models,
            ..Self::default()
        };
        for file in &new.pipelines {
            let pipeline = &file.config;
            let model_reloads = pipeline
                .model
                .name()
                .is_some_and(|m| changes.unloaded_models.iter().any(|u| u == m));
            match running.get(&pipeline.name) {
                None => changes.added.push(pipeline.name.clone()),
                Some(old)
                    if old != pipeline || model_reloads || failed.contains(&pipeline.name) =>
                {
                    changes.changed.push(pipeline.name.clone());
                }
                Some(_) => changes.unchanged.push(pipeline.name.clone()),
            }
        }
        changes.removed = running
            .keys()
            .filter(|name| new.pipeline(name).is_none())
            .cloned()
            .collect();
        changes
    }

    /// Pipelines to stop before anything starts.
    pub fn to_stop(&self) -> impl Iterator<Item = &String> {
        self.removed.iter().chain(&self.changed)
    }

    /// Pipelines to (re)start.
    pub fn to_start(&self) -> impl Iterator<Item = &String> {
        self.added.iter().chain(&self.changed)
    }
}
