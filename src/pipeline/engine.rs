//! Runs the pipelines of a configuration in three steps, once the models they use are loaded:
//! plan ([`super::plan`]: every fact derived once), build ([`super::build`]: pieces, a typed
//! error per pipeline), spawn (threads, here). [`Engine::apply`] does the same for a new
//! configuration while running (a reload): it stops what was removed or changed, starts what
//! was added or changed, and leaves the rest untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::build::{self, Pieces, Published};
use super::output_stage::RetryPolicy;
use super::plan::{
    Changes, PipelineFailure, PipelinePlan, Tasks, batch_policy, models_in_use, retry_policy,
};
use super::stats::PipelineState;
use super::stop::{StopHandle, StopSignal};
use super::view::{EngineView, PipelineHandle, PipelineReport, SharedView, WorkerHandle};
use super::worker::{self, Join, WorkerStats};
use super::{EngineError, PipelineError};
use crate::config::{Config, ModelConfig, PipelineConfig, SinkConfig, Task};
use crate::media::registry;
use crate::media::rtsp_server::RtspServer;
use crate::publish::{Publishing, StateEvent};
use crate::runtime::{FrameStager, LoadError, ModelLoader};

/// The daemon-wide shutdown, shared with signal handlers and tests.
pub type ShutdownHandle = StopHandle;

/// A pipeline the engine knows: running, finished, or failed to build.
struct Known {
    /// Its configuration as applied, to tell what a reload changes.
    config: PipelineConfig,
    handle: Arc<PipelineHandle>,
    /// `None` for a pipeline that could not be built.
    thread: Option<JoinHandle<PipelineState>>,
    stop: StopHandle,
}

/// A model's inference worker.
struct Worker {
    config: ModelConfig,
    task: Task,
    /// Where pipelines join; dropped to let the worker end once its lanes are done.
    joins: Sender<Join>,
    /// What the model's pipelines' source threads call to stage frames on its device.
    stager: Arc<dyn FrameStager>,
    thread: JoinHandle<()>,
    handle: Arc<WorkerHandle>,
}

pub struct Engine {
    view: SharedView,
    pipelines: BTreeMap<String, Known>,
    workers: BTreeMap<String, Worker>,
    /// The order of the last configuration's pipelines, for the view and the reports.
    order: Vec<String>,
    rtsp: Option<RtspServer>,
    /// The broker connections (MQTT, Kafka) the pipelines publish on.
    publishing: Publishing,
    shutdown: ShutdownHandle,
    shutdown_signal: Receiver<()>,
    grace: Duration,
    retry: RetryPolicy,
    next_id: usize,
}

impl Engine {
    /// Starts everything. A pipeline that cannot be built is logged and reported `failed`;
    /// the others run. Errors only when nothing can run at all (GStreamer missing, RTSP port
    /// taken, no thread for a model's worker).
    pub fn start(config: &Config, loader: &ModelLoader<'_>) -> Result<Self, EngineError> {
        registry::init()?;
        let shutdown = StopHandle::new();
        let shutdown_signal = shutdown.receiver();
        let mut engine = Self {
            view: SharedView::new(EngineView::empty()),
            pipelines: BTreeMap::new(),
            workers: BTreeMap::new(),
            order: Vec::new(),
            rtsp: None,
            publishing: Publishing::start(config),
            shutdown,
            shutdown_signal,
            grace: Duration::from_millis(config.daemon.shutdown.grace_ms),
            retry: retry_policy(config),
            next_id: 0,
        };
        engine.apply(config, loader)?;
        Ok(engine)
    }

    /// Makes `config` the running configuration: stops the pipelines it removes or changes
    /// (and the models whose definition changed or that nothing uses), loads the models it
    /// needs, starts what it adds or changes. Pipelines it leaves alone keep running.
    pub fn apply(
        &mut self,
        config: &Config,
        loader: &ModelLoader<'_>,
    ) -> Result<Changes, EngineError> {
        let running: BTreeMap<String, PipelineConfig> = self
            .pipelines
            .iter()
            .map(|(name, known)| (name.clone(), known.config.clone()))
            .collect();
        // Not running because they failed: never built, or ended failed (a reload retries
        // them).
        let failed: BTreeSet<String> = self
            .pipelines
            .iter()
            .filter(|(_, known)| {
                known.thread.is_none()
                    || matches!(known.handle.stats.state(), PipelineState::Failed { .. })
            })
            .map(|(name, _)| name.clone())
            .collect();
        let models = self
            .workers
            .iter()
            .map(|(name, worker)| (name.clone(), worker.config.clone()))
            .collect();
        let changes = Changes::between(&running, &failed, &models, config);
        for name in changes.to_stop() {
            self.stop_pipeline(name);
        }
        for name in &changes.unloaded_models {
            self.stop_worker(name);
            tracing::info!(model = %name, "model unloaded");
        }
        self.grace = Duration::from_millis(config.daemon.shutdown.grace_ms);
        self.retry = retry_policy(config);
        let tasks = self.load_models(config, loader)?;
        self.ensure_rtsp(config)?;
        self.publishing.ensure(config);
        for name in changes.to_start() {
            if let Some(file) = config.pipeline(name) {
                self.start_pipeline(&file.config, &tasks);
            }
        }
        self.order = config
            .pipelines
            .iter()
            .map(|p| p.config.name.clone())
            .collect();
        self.publish_view();
        Ok(changes)
    }

    /// Stops a pipeline and waits (within the grace period) for its outputs to finish.
    fn stop_pipeline(&mut self, name: &str) {
        let Some(mut known) = self.pipelines.remove(name) else {
            return;
        };
        known.stop.trigger();
        if let Some(thread) = known.thread.take() {
            let _ = thread.join();
        }
        known.handle.stats.live.close();
        if let Some(rtsp) = &self.rtsp {
            for sink in &known.config.sinks {
                if let SinkConfig::Rtsp(mount) = sink {
                    rtsp.mounts().unmount(&mount.mount);
                }
            }
        }
        tracing::info!(pipeline = %name, "pipeline stopped");
    }

    /// Ends a model's worker once its pipelines are gone (their lanes close first).
    fn stop_worker(&mut self, model: &str) {
        if let Some(worker) = self.workers.remove(model) {
            drop(worker.joins);
            let _ = worker.thread.join();
        }
    }

    /// Loads every model the configuration uses that has no worker yet, and starts its
    /// worker; returns what each model in use computes, or why it could not be loaded.
    fn load_models(
        &mut self,
        config: &Config,
        loader: &ModelLoader<'_>,
    ) -> Result<Tasks, EngineError> {
        let mut tasks = Tasks::new();
        for model in models_in_use(config) {
            if self
                .workers
                .get(&model)
                .is_some_and(|worker| worker.thread.is_finished())
            {
                // A worker that ended by itself (its model panicked) is loaded afresh.
                tracing::info!(model = %model, "restarting a model worker that had stopped");
                self.stop_worker(&model);
            }
            if let Some(worker) = self.workers.get(&model) {
                tasks.insert(model, Ok(worker.task));
                continue;
            }
            let Some(model_config) = config.daemon.models.get(&model) else {
                let error = Arc::new(LoadError::Undefined(model.clone()));
                tasks.insert(model, Err(error));
                continue;
            };
            let runtime = match loader(&model) {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(model = %model, %error, "model cannot be loaded");
                    tasks.insert(model, Err(Arc::new(error)));
                    continue;
                }
            };
            let (joins, joined) = crossbeam_channel::unbounded();
            let stats = Arc::new(WorkerStats::default());
            let remote = runtime.inference.remote_stats();
            let thread = spawn(format!("infer-{model}"), {
                let (stats, name) = (stats.clone(), model.clone());
                let policy = batch_policy(&model_config.batch);
                move || worker::run(&name, joined, policy, runtime.inference, stats)
            })?;
            tasks.insert(model.clone(), Ok(runtime.task));
            let handle = Arc::new(WorkerHandle {
                model: model.clone(),
                stats,
                cuda_device: runtime.cuda_device,
                remote,
            });
            let worker = Worker {
                config: model_config.clone(),
                task: runtime.task,
                stager: runtime.stager.clone(),
                joins,
                thread,
                handle,
            };
            self.workers.insert(model, worker);
        }
        Ok(tasks)
    }

    /// Starts the RTSP server the first time a pipeline publishes over RTSP.
    fn ensure_rtsp(&mut self, config: &Config) -> Result<(), EngineError> {
        let wants = config.pipelines.iter().any(|p| {
            p.config
                .sinks
                .iter()
                .any(|s| matches!(s, SinkConfig::Rtsp(_)))
        });
        if wants && self.rtsp.is_none() {
            self.rtsp = Some(RtspServer::start(&config.daemon.rtsp)?);
        }
        Ok(())
    }

    /// Plans, builds and spawns one pipeline; the one place that decides a pipeline has
    /// failed before it ran.
    fn start_pipeline(&mut self, config: &PipelineConfig, tasks: &Tasks) {
        let id = self.next_id;
        self.next_id += 1;
        let stop = StopHandle::new();
        let signal = StopSignal::new(self.shutdown_signal.clone(), stop.clone(), self.grace);
        let started = PipelinePlan::new(id, config, tasks, self.retry)
            .and_then(|plan| self.spawn(plan, signal, stop.clone()));
        let (handle, thread) = match started {
            Ok((handle, thread)) => (handle, Some(thread)),
            Err(failure) => {
                let error = failure.error.to_string();
                tracing::error!(pipeline = %failure.name, %error, "pipeline cannot be built");
                self.publishing.events().state(
                    &failure.name,
                    &StateEvent {
                        state: "failed",
                        reason: Some(error.clone()),
                        attempt: None,
                    },
                );
                (
                    Arc::new(PipelineHandle::failed(failure.name, failure.model, error)),
                    None,
                )
            }
        };
        let known = Known {
            config: config.clone(),
            handle,
            thread,
            stop,
        };
        self.pipelines.insert(config.name.clone(), known);
    }

    fn spawn(
        &mut self,
        plan: PipelinePlan,
        stop: StopSignal,
        own: StopHandle,
    ) -> Result<(Arc<PipelineHandle>, JoinHandle<PipelineState>), PipelineFailure> {
        let (name, model) = (plan.name.clone(), plan.model_ref());
        let failure = |error: PipelineError| PipelineFailure {
            name: name.clone(),
            model: model.clone(),
            error: Box::new(error),
        };
        let annotation = plan.annotation.clone();
        let stager = plan
            .model
            .as_ref()
            .and_then(|(model, _)| self.workers.get(model))
            .map(|worker| worker.stager.clone());
        let rtsp = self.rtsp.as_ref().map(RtspServer::mounts);
        let published = Published {
            sinks: self
                .publishing
                .sinks(&plan.name, &plan.metadata)
                .map_err(|error| failure(error.into()))?,
            events: self.publishing.events(),
        };
        let pieces =
            build::build(plan, stager, rtsp, stop, own, self.grace, published).map_err(failure)?;
        let (handle, thread, lane) = spawn_pipeline(pieces, self.grace).map_err(failure)?;
        if let Some((model, lane)) = lane
            && let Some(worker) = self.workers.get(&model)
            && let Err(refused) = worker.joins.send(Join { lane, annotation })
        {
            // The worker ended by itself (its model panicked): the pipeline cannot run on it.
            refused.0.lane.stop.fail(format!(
                "the model worker for '{model}' has stopped; a reload restarts it"
            ));
        }
        Ok((Arc::new(handle), thread))
    }

    fn publish_view(&self) {
        let pipelines = self
            .order
            .iter()
            .filter_map(|name| self.pipelines.get(name))
            .map(|known| known.handle.clone())
            .collect();
        let workers = self.workers.values().map(|w| w.handle.clone()).collect();
        self.view.replace(EngineView {
            pipelines,
            workers,
            rtsp_port: self.rtsp.as_ref().map(RtspServer::port),
            rtsp_clients: self.rtsp.as_ref().map(RtspServer::stats),
            brokers: self.publishing.outboxes(),
        });
    }

    /// The view the control plane serves from; it follows reloads and stays valid after
    /// `wait`.
    pub fn view(&self) -> SharedView {
        self.view.clone()
    }

    pub fn pipelines(&self) -> Vec<Arc<PipelineHandle>> {
        self.view.current().pipelines().to_vec()
    }

    pub fn pipeline(&self, name: &str) -> Option<Arc<PipelineHandle>> {
        self.view.current().pipeline(name).cloned()
    }

    pub fn worker_stats(&self, model: &str) -> Option<Arc<WorkerStats>> {
        self.view.current().worker_stats(model)
    }

    pub fn rtsp_port(&self) -> Option<u16> {
        self.rtsp.as_ref().map(RtspServer::port)
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Whether every pipeline's thread has ended (finite sources finished, or all stopped).
    pub fn all_finished(&self) -> bool {
        self.pipelines
            .values()
            .all(|known| known.thread.as_ref().is_none_or(JoinHandle::is_finished))
    }

    /// How many pipelines the running configuration has.
    pub fn pipeline_count(&self) -> usize {
        self.order.len()
    }

    /// Waits for every pipeline to finish (finite sources end; live ones end after
    /// shutdown), then stops the workers and the RTSP server.
    pub fn wait(mut self) -> Vec<PipelineReport> {
        for known in self.pipelines.values_mut() {
            if let Some(thread) = known.thread.take() {
                // The thread published its final state itself; only a panic is left to say.
                if thread.join().is_err() {
                    known.handle.stats.set_state(PipelineState::Failed {
                        error: "source thread panicked".into(),
                    });
                }
            }
        }
        let reports = self
            .order
            .iter()
            .filter_map(|name| self.pipelines.get(name))
            .map(|known| known.handle.report())
            .collect();
        let models: Vec<String> = self.workers.keys().cloned().collect();
        for model in models {
            self.stop_worker(&model);
        }
        if let Some(rtsp) = self.rtsp.take() {
            rtsp.stop();
        }
        self.publishing.close(self.grace);
        reports
    }
}

/// Starts a pipeline's output thread and its source thread. The source thread supervises the
/// source until it is done, then waits for the output to write everything (returning from the
/// supervisor drops the feed, which closes the first hop, so the stages after it drain) and
/// publishes the final state. So a finite pipeline reads `finished` as soon as its last frame
/// is written, not only when the whole engine stops.
#[allow(clippy::type_complexity)]
fn spawn_pipeline(
    pieces: Pieces,
    grace: Duration,
) -> Result<
    (
        PipelineHandle,
        JoinHandle<PipelineState>,
        Option<(String, worker::Lane)>,
    ),
    PipelineError,
> {
    let Pieces {
        name,
        stats,
        supervisor,
        feed,
        output,
        output_input,
        lane,
        handle,
    } = pieces;
    let output = spawn(format!("out-{name}"), move || {
        output.run(output_input, grace)
    })?;
    let deliver = feed.deliver(name.clone(), stats.clone());
    let source = spawn(format!("src-{name}"), move || {
        let ended = supervisor.run(deliver);
        let state = match output.join() {
            Ok(()) => stats.settle_losses(ended.clone()),
            Err(_) => PipelineState::Failed {
                error: "the output thread panicked".into(),
            },
        };
        if state != ended {
            tracing::error!(pipeline = %name, %state, "pipeline failed");
        }
        stats.set_state(state.clone());
        // Its live viewers are let go: no more video will come.
        stats.live.close();
        state
    })?;
    Ok((handle, source, lane))
}

fn spawn<T: Send + 'static>(
    name: String,
    body: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, PipelineError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(body)
        .map_err(|error| PipelineError::Thread {
            name,
            reason: error.to_string(),
        })
}
