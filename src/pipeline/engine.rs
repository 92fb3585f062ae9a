//! Runs every pipeline of a configuration in three steps, once the models they use are
//! loaded: plan ([`super::plan`]: every fact derived once), build ([`super::build`]: pieces,
//! a typed error per pipeline), spawn (threads, here). Then drains on shutdown and reports.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::build::{self, Pieces};
use super::plan::{PipelineFailure, PipelinePlan, Plan, models_in_use};
use super::stats::PipelineState;
use super::view::{EngineView, PipelineHandle, PipelineReport, WorkerHandle};
use super::worker::{self, BatchPolicy, Lane, WorkerStats};
use super::{EngineError, PipelineError};
use crate::config::{Config, Task};
use crate::media::registry;
use crate::media::rtsp_server::{RtspMounts, RtspServer};
use crate::runtime::{LoadError, ModelLoader, ModelRuntime};

/// Closes the shutdown channel from any thread (signal handler, test, control plane).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Mutex<Option<Sender<()>>>>);

impl ShutdownHandle {
    pub fn trigger(&self) {
        if let Ok(mut sender) = self.0.lock() {
            sender.take();
        }
    }
}

/// The thread of one pipeline (its source supervisor, which then waits for its output),
/// joined by `Engine::wait`; `None` for a pipeline that is not running.
type PipelineThread = Option<JoinHandle<PipelineState>>;

/// Each model in use: ready, or why it could not be loaded.
type Runtimes = BTreeMap<String, Result<ModelRuntime, Arc<LoadError>>>;

pub struct Engine {
    view: Arc<EngineView>,
    /// Parallel to `view.pipelines`.
    threads: Vec<PipelineThread>,
    workers: Vec<JoinHandle<()>>,
    rtsp: Option<RtspServer>,
    shutdown: ShutdownHandle,
}

impl Engine {
    /// Starts everything. A pipeline that cannot be built is logged and reported `failed`;
    /// the others run. Errors only when nothing can run at all (GStreamer missing, RTSP port
    /// taken, no thread for a model's worker).
    pub fn start(config: &Config, loader: &ModelLoader<'_>) -> Result<Self, EngineError> {
        registry::init()?;
        let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
        let shutdown = ShutdownHandle(Arc::new(Mutex::new(Some(shutdown_tx))));
        // Models first: a pipeline's facts depend on the task (labels are drawn for
        // classifiers), and a model that cannot load fails only the pipelines that use it.
        let mut runtimes = load_models(config, loader);
        let tasks: BTreeMap<String, Result<Task, Arc<LoadError>>> = runtimes
            .iter()
            .map(|(name, runtime)| {
                (
                    name.clone(),
                    runtime.as_ref().map(|r| r.task).map_err(Clone::clone),
                )
            })
            .collect();
        let plan = Plan::new(config, &tasks);
        let rtsp = plan.rtsp.as_ref().map(RtspServer::start).transpose()?;
        let mut spawner = Spawner {
            rtsp: rtsp.as_ref().map(RtspServer::mounts),
            shutdown: shutdown_rx,
            grace: plan.grace,
            runtimes: &mut runtimes,
            lanes: BTreeMap::new(),
        };
        let mut pipelines = Vec::new();
        let mut threads = Vec::new();
        for planned in plan.pipelines {
            match planned.and_then(|plan| spawner.start(plan)) {
                Ok((handle, thread)) => {
                    pipelines.push(handle);
                    threads.push(Some(thread));
                }
                // The one place that decides a pipeline has failed before it ran.
                Err(failure) => {
                    let error = failure.error.to_string();
                    tracing::error!(pipeline = %failure.name, %error, "pipeline cannot be built");
                    pipelines.push(PipelineHandle::failed(failure.name, failure.model, error));
                    threads.push(None);
                }
            }
        }
        let lanes = std::mem::take(&mut spawner.lanes);
        let (workers, worker_threads) = spawn_workers(lanes, runtimes, &plan.models)?;
        let view = Arc::new(EngineView {
            pipelines,
            workers,
            rtsp_port: rtsp.as_ref().map(RtspServer::port),
        });
        Ok(Self {
            view,
            threads,
            workers: worker_threads,
            rtsp,
            shutdown,
        })
    }

    /// The read-only view the control plane serves from; it stays valid after `wait`.
    pub fn view(&self) -> Arc<EngineView> {
        self.view.clone()
    }

    pub fn pipelines(&self) -> &[PipelineHandle] {
        self.view.pipelines()
    }

    pub fn pipeline(&self, name: &str) -> Option<&PipelineHandle> {
        self.view.pipeline(name)
    }

    pub fn worker_stats(&self, model: &str) -> Option<Arc<WorkerStats>> {
        self.view.worker_stats(model)
    }

    pub fn rtsp_port(&self) -> Option<u16> {
        self.view.rtsp_port()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Waits for every pipeline to finish (finite sources end; live ones end after
    /// shutdown), then stops the workers and the RTSP server.
    pub fn wait(mut self) -> Vec<PipelineReport> {
        let mut reports = Vec::new();
        for (pipeline, thread) in self.view.pipelines.iter().zip(&mut self.threads) {
            if let Some(thread) = thread.take() {
                // The thread published its final state itself; only a panic is left to say.
                if thread.join().is_err() {
                    pipeline.stats.set_state(PipelineState::Failed {
                        error: "source thread panicked".into(),
                    });
                }
            }
            reports.push(pipeline.report());
        }
        for thread in self.workers.drain(..) {
            let _ = thread.join();
        }
        if let Some(rtsp) = self.rtsp.take() {
            rtsp.stop();
        }
        reports
    }
}

/// Loads every model some pipeline uses; a failure is kept (and logged) for its pipelines.
fn load_models(config: &Config, loader: &ModelLoader<'_>) -> Runtimes {
    models_in_use(config)
        .into_iter()
        .map(|model| {
            let loaded = loader(&model).map_err(Arc::new);
            if let Err(error) = &loaded {
                tracing::error!(model = %model, %error, "model cannot be loaded");
            }
            (model, loaded)
        })
        .collect()
}

/// Builds and spawns pipelines one by one, gathering each model's lanes for its worker.
struct Spawner<'a> {
    rtsp: Option<RtspMounts>,
    shutdown: Receiver<()>,
    grace: Duration,
    runtimes: &'a mut Runtimes,
    lanes: BTreeMap<String, Vec<Lane>>,
}

impl Spawner<'_> {
    fn start(
        &mut self,
        plan: PipelinePlan,
    ) -> Result<(PipelineHandle, JoinHandle<PipelineState>), PipelineFailure> {
        let (name, model) = (plan.name.clone(), plan.model_ref());
        let failure = |error: PipelineError| PipelineFailure {
            name: name.clone(),
            model: model.clone(),
            error: Box::new(error),
        };
        let index = plan.index;
        let annotation = plan.annotation.clone();
        let stager = plan
            .model
            .as_ref()
            .and_then(|(model, _)| self.runtimes.get(model))
            .and_then(|runtime| runtime.as_ref().ok())
            .map(|runtime| runtime.stager.clone());
        let pieces = build::build(
            plan,
            stager,
            self.rtsp.clone(),
            self.shutdown.clone(),
            self.grace,
        )
        .map_err(failure)?;
        let (handle, thread, lane) = spawn_pipeline(pieces, self.grace).map_err(failure)?;
        if let Some((model, lane)) = lane {
            if let Some(Ok(runtime)) = self.runtimes.get_mut(&model) {
                runtime.inference.attach(index, &annotation);
            }
            self.lanes.entry(model).or_default().push(lane);
        }
        Ok((handle, thread))
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
        Option<(String, Lane)>,
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
        let state = supervisor.run(deliver);
        if output.join().is_err() {
            tracing::error!(pipeline = %name, "output thread panicked");
        }
        stats.set_state(state.clone());
        state
    })?;
    Ok((handle, source, lane))
}

/// One worker thread per model in use that loaded and has pipelines.
fn spawn_workers(
    lanes: BTreeMap<String, Vec<Lane>>,
    mut runtimes: Runtimes,
    policies: &BTreeMap<String, BatchPolicy>,
) -> Result<(Vec<WorkerHandle>, Vec<JoinHandle<()>>), EngineError> {
    let mut workers = Vec::new();
    let mut threads = Vec::new();
    for (model, model_lanes) in lanes {
        let (Some(Ok(runtime)), Some(policy)) = (runtimes.remove(&model), policies.get(&model))
        else {
            continue;
        };
        let stats = Arc::new(WorkerStats::default());
        let thread = spawn(format!("infer-{model}"), {
            let (stats, model, policy) = (stats.clone(), model.clone(), policy.clone());
            move || worker::run(&model, model_lanes, policy, runtime.inference, stats)
        })?;
        workers.push(WorkerHandle { model, stats });
        threads.push(thread);
    }
    Ok((workers, threads))
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
