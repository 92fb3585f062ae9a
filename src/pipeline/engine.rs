//! Runs every pipeline of a config: sources, hops, inference workers, outputs, the RTSP
//! server; drains on shutdown; reports per-pipeline results.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::channel::{DropCounter, hop};
use super::frame::{Frame, Processed};
use super::metadata::{self, Drops, JsonlTarget};
use super::stats::{PipelineState, PipelineStats};
use super::supervisor::Supervisor;
use super::worker::{self, BatchInference, BatchPolicy, Lane, WorkerStats};
use crate::config::{Config, MetadataConfig, NO_MODEL, PipelineConfig, SinkConfig, WhenFull};
use crate::media::output::{VideoOutput, set_aside_recordings};
use crate::media::rtsp_server::{RtspMounts, RtspServer};

/// A model made ready for a worker.
pub struct ModelRuntime {
    pub inference: Box<dyn BatchInference>,
    pub task: crate::models::Task,
}

/// Builds the inference for a model shared by `pipelines` (index, config); the engine calls
/// it once per model in use. Tests pass their own to run the engine on chosen models.
pub type InferenceFactory<'a> =
    dyn Fn(&str, &[(usize, &PipelineConfig)]) -> Result<ModelRuntime, String> + 'a;

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

/// A pipeline as the control plane and tests see it: read-only, and every read is an atomic
/// load (the state is behind a mutex the frame path never takes), so reading never slows or
/// blocks a frame.
pub struct PipelineHandle {
    pub name: String,
    pub model: String,
    pub stats: Arc<PipelineStats>,
    /// Frames dropped at the first hop (source → model, or source → output without a model).
    pub input_drops: Arc<DropCounter>,
    /// Frames dropped at the second hop (model → output); always 0 without a model.
    pub output_drops: Arc<DropCounter>,
    /// Current depth of the first hop and its capacity; (0, 0) once the hop is closed.
    input_depth: Arc<dyn Fn() -> (usize, usize) + Send + Sync>,
    /// The first hop's capacity; 0 for a pipeline that could not be built (it has no hop).
    capacity: usize,
    started: Instant,
}

impl PipelineHandle {
    /// The first hop's current depth and its capacity.
    pub fn queue_depth(&self) -> (usize, usize) {
        let (depth, _) = (self.input_depth)();
        (depth, self.capacity)
    }

    /// Time since the engine started the pipeline.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// An inference worker as the control plane sees it.
pub struct WorkerHandle {
    pub model: String,
    pub stats: Arc<WorkerStats>,
}

/// Everything the control plane reads of a running engine, shared read-only (`Arc`) with
/// it: the pipelines' and workers' counters and states. It outlives the engine (a server
/// may answer while `Engine::wait` drains, and after).
pub struct EngineView {
    pipelines: Vec<PipelineHandle>,
    workers: Vec<WorkerHandle>,
    rtsp_port: Option<u16>,
}

impl EngineView {
    /// Every pipeline of the configuration, in its order, built or not.
    pub fn pipelines(&self) -> &[PipelineHandle] {
        &self.pipelines
    }

    pub fn pipeline(&self, name: &str) -> Option<&PipelineHandle> {
        self.pipelines.iter().find(|p| p.name == name)
    }

    /// One per model in use that loaded, in model-name order.
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    pub fn worker_stats(&self, model: &str) -> Option<Arc<WorkerStats>> {
        self.workers
            .iter()
            .find(|w| w.model == model)
            .map(|w| w.stats.clone())
    }

    /// The RTSP server's port, when a pipeline publishes over RTSP.
    pub fn rtsp_port(&self) -> Option<u16> {
        self.rtsp_port
    }
}

/// The thread of one pipeline (its source supervisor, which then waits for its output), joined
/// by `Engine::wait`; `None` for a pipeline that could not be built.
type PipelineThread = Option<JoinHandle<PipelineState>>;

/// What a pipeline did, for the summary `visiond run` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineReport {
    pub name: String,
    pub state: PipelineState,
    pub frames_in: u64,
    pub frames_out: u64,
    pub dropped: u64,
    pub seconds: f64,
    pub fps: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

impl std::fmt::Display for PipelineReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        let state = match &self.state {
            PipelineState::Failed { error } => format!("failed: {error}"),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.get("state").and_then(|s| s.as_str().map(String::from)))
                .unwrap_or_default(),
        };
        write!(
            f,
            "{}: {state}; frames in {}, out {}, dropped {}; {:.1} fps; latency p50 {}, p99 {}",
            self.name,
            self.frames_in,
            self.frames_out,
            self.dropped,
            self.fps,
            ms(self.latency_p50_ms),
            ms(self.latency_p99_ms)
        )
    }
}

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
    /// taken).
    pub fn start(config: &Config, inference: &InferenceFactory<'_>) -> Result<Self, String> {
        gstreamer::init().map_err(|e| format!("GStreamer could not start: {e}"))?;
        let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
        let shutdown = ShutdownHandle(Arc::new(Mutex::new(Some(shutdown_tx))));
        let wants_rtsp = config.pipelines.iter().any(|p| {
            p.config
                .sinks
                .iter()
                .any(|s| matches!(s, SinkConfig::Rtsp(_)))
        });
        let rtsp = if wants_rtsp {
            Some(RtspServer::start(&config.daemon.rtsp)?)
        } else {
            None
        };
        let grace = Duration::from_millis(config.daemon.shutdown.grace_ms);
        // Models first: a pipeline's output depends on the task (labels are drawn for
        // classifiers), and a model that cannot load fails only the pipelines that use it.
        let mut users: BTreeMap<String, Vec<(usize, &PipelineConfig)>> = BTreeMap::new();
        for (index, file) in config.pipelines.iter().enumerate() {
            if file.config.model != NO_MODEL {
                users
                    .entry(file.config.model.clone())
                    .or_default()
                    .push((index, &file.config));
            }
        }
        let mut runtimes: BTreeMap<String, Result<ModelRuntime, String>> = BTreeMap::new();
        for (model, model_users) in &users {
            let loaded = inference(model, model_users);
            if let Err(error) = &loaded {
                tracing::error!(model = %model, %error, "model cannot be loaded");
            }
            runtimes.insert(model.clone(), loaded);
        }
        let mut pipelines = Vec::new();
        let mut threads = Vec::new();
        let mut lanes: BTreeMap<String, Vec<Lane>> = BTreeMap::new();
        for (index, file) in config.pipelines.iter().enumerate() {
            let pipeline = &file.config;
            let stats = Arc::new(PipelineStats::default());
            let live = pipeline.source.is_live();
            let policy = pipeline.queue.when_full.unwrap_or(if live {
                WhenFull::DropOldest
            } else {
                WhenFull::Block
            });
            let capacity = pipeline.queue.capacity;
            let (out_tx, out_rx, output_drops) = hop::<Processed>(capacity, policy);
            let uses_model = pipeline.model != NO_MODEL;
            let task = match runtimes.get(&pipeline.model) {
                Some(Ok(runtime)) => Some(runtime.task),
                Some(Err(error)) => {
                    let error = format!("model {} cannot be loaded: {error}", pipeline.model);
                    stats.set_state(PipelineState::Failed { error });
                    pipelines.push(PipelineHandle::failed(pipeline, stats));
                    threads.push(None);
                    continue;
                }
                None => None,
            };
            let draw_label = task == Some(crate::models::Task::Classification);
            let wants_depth16 = pipeline
                .sinks
                .iter()
                .any(|s| matches!(s, SinkConfig::Depth16(_)));
            if wants_depth16 && task != Some(crate::models::Task::Depth) {
                let error = format!(
                    "a depth16 sink needs a depth model, and model {} is not one",
                    pipeline.model
                );
                tracing::error!(pipeline = %pipeline.name, %error, "pipeline cannot be built");
                stats.set_state(PipelineState::Failed { error });
                pipelines.push(PipelineHandle::failed(pipeline, stats));
                threads.push(None);
                continue;
            }
            let (in_tx, in_rx, model_input_drops) = hop::<Frame>(capacity, policy);
            // "input" is the first hop after the source; "output" is everything after the
            // model (or after the source, without one) up to the encoder, whose own queue is
            // bounded too and counts into it.
            let hop_drops = if uses_model {
                HopDrops {
                    input: model_input_drops.clone(),
                    output: output_drops.clone(),
                }
            } else {
                HopDrops {
                    input: output_drops.clone(),
                    output: Arc::new(DropCounter::default()),
                }
            };
            let output = match start_output(
                pipeline,
                live,
                policy,
                draw_label,
                rtsp.as_ref(),
                grace,
                out_rx,
                stats.clone(),
                &hop_drops,
            ) {
                Ok(output) => output,
                Err(error) => {
                    tracing::error!(pipeline = %pipeline.name, %error, "pipeline cannot be built");
                    stats.set_state(PipelineState::Failed { error });
                    pipelines.push(PipelineHandle::failed(pipeline, stats));
                    threads.push(None);
                    continue;
                }
            };
            let supervisor = Supervisor {
                index,
                name: pipeline.name.clone(),
                source: pipeline.source.clone(),
                stats: stats.clone(),
                shutdown: shutdown_rx.clone(),
                grace,
            };
            let counting = stats.clone();
            let (input_depth, pipeline_thread) = if uses_model {
                let in_tx = Arc::new(in_tx);
                // Weak: the handle must not keep the hop open after the source is done.
                let depth_of = Arc::downgrade(&in_tx);
                lanes.entry(pipeline.model.clone()).or_default().push(Lane {
                    pipeline: index,
                    name: pipeline.name.clone(),
                    input: in_rx,
                    output: out_tx,
                });
                let thread = spawn_pipeline(supervisor, output, move |frame| {
                    counting.frames_in.fetch_add(1, Ordering::Relaxed);
                    in_tx.send(frame);
                })?;
                let depth: Arc<dyn Fn() -> (usize, usize) + Send + Sync> = Arc::new(move || {
                    depth_of
                        .upgrade()
                        .map_or((0, 0), |h| (h.len(), h.capacity()))
                });
                (depth, thread)
            } else {
                // Without a model the source feeds the output hop directly: one hop, one policy.
                drop((in_tx, in_rx));
                let out_tx = Arc::new(out_tx);
                let depth_of = Arc::downgrade(&out_tx);
                let thread = spawn_pipeline(supervisor, output, move |frame| {
                    counting.frames_in.fetch_add(1, Ordering::Relaxed);
                    out_tx.send(Processed::passthrough(frame));
                })?;
                let depth: Arc<dyn Fn() -> (usize, usize) + Send + Sync> = Arc::new(move || {
                    depth_of
                        .upgrade()
                        .map_or((0, 0), |h| (h.len(), h.capacity()))
                });
                (depth, thread)
            };
            pipelines.push(PipelineHandle {
                name: pipeline.name.clone(),
                model: pipeline.model.clone(),
                stats,
                input_drops: hop_drops.input,
                output_drops: hop_drops.output,
                input_depth,
                capacity: capacity.max(1),
                started: Instant::now(),
            });
            threads.push(Some(pipeline_thread));
        }
        let mut workers = Vec::new();
        let mut worker_threads = Vec::new();
        for (model, model_lanes) in lanes {
            let Some(Ok(runtime)) = runtimes.remove(&model) else {
                continue;
            };
            let model_config = &config.daemon.models[&model];
            let policy = BatchPolicy {
                max_size: model_config.batch.max_size,
                max_wait: Duration::from_millis(model_config.batch.max_wait_ms),
            };
            let stats = Arc::new(WorkerStats::default());
            let thread = std::thread::Builder::new()
                .name(format!("infer-{model}"))
                .spawn({
                    let stats = stats.clone();
                    let model = model.clone();
                    move || worker::run(&model, model_lanes, policy, runtime.inference, stats)
                })
                .map_err(|e| format!("cannot start the inference thread for model {model}: {e}"))?;
            workers.push(WorkerHandle { model, stats });
            worker_threads.push(thread);
        }
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

impl PipelineHandle {
    fn failed(pipeline: &PipelineConfig, stats: Arc<PipelineStats>) -> Self {
        Self {
            name: pipeline.name.clone(),
            model: pipeline.model.clone(),
            stats,
            input_drops: Arc::new(DropCounter::default()),
            output_drops: Arc::new(DropCounter::default()),
            input_depth: Arc::new(|| (0, 0)),
            capacity: 0,
            started: Instant::now(),
        }
    }

    pub fn dropped(&self) -> u64 {
        self.input_drops.get() + self.output_drops.get()
    }

    fn report(&self) -> PipelineReport {
        let seconds = self.started.elapsed().as_secs_f64();
        let frames_out = self.stats.frames_out();
        let ms = |q: f64| {
            self.stats
                .latency
                .quantile(q)
                .map(|d| d.as_secs_f64() * 1e3)
        };
        PipelineReport {
            name: self.name.clone(),
            state: self.stats.state(),
            frames_in: self.stats.frames_in(),
            frames_out,
            dropped: self.dropped(),
            seconds,
            fps: if seconds > 0.0 {
                frames_out as f64 / seconds
            } else {
                0.0
            },
            latency_p50_ms: ms(0.5),
            latency_p99_ms: ms(0.99),
        }
    }
}

/// Starts a pipeline's thread: it supervises the source until it is done, then waits for
/// the pipeline's output to write everything (returning from `run` drops `deliver`, which
/// closes the first hop, so the stages after it drain) and publishes the final state. So a
/// finite pipeline reads `finished` as soon as its last frame is written, not only when the
/// whole engine stops.
fn spawn_pipeline(
    supervisor: Supervisor,
    output: JoinHandle<()>,
    deliver: impl Fn(Frame) + Send + Sync + 'static,
) -> Result<JoinHandle<PipelineState>, String> {
    let name = supervisor.name.clone();
    std::thread::Builder::new()
        .name(format!("src-{name}"))
        .spawn(move || {
            let name = supervisor.name.clone();
            let stats = supervisor.stats.clone();
            let state = supervisor.run(deliver);
            if output.join().is_err() {
                tracing::error!(pipeline = %name, "output thread panicked");
            }
            stats.set_state(state.clone());
            state
        })
        .map_err(|e| format!("cannot start the source thread of pipeline {name}: {e}"))
}

/// A pipeline's drop counters, as its metadata lines and metrics report them.
struct HopDrops {
    input: Arc<DropCounter>,
    output: Arc<DropCounter>,
}

/// What an output thread needs to build its video output, again after a failure.
struct OutputRecipe {
    pipeline: PipelineConfig,
    live: bool,
    policy: WhenFull,
    draw_label: bool,
    rtsp: Option<RtspMounts>,
    drops: Arc<DropCounter>,
}

impl OutputRecipe {
    /// Builds and starts the output; earlier recordings at its paths are kept aside first.
    fn start(&self) -> Result<Option<VideoOutput>, String> {
        set_aside_recordings(&self.pipeline);
        let video = VideoOutput::build(
            &self.pipeline,
            self.live,
            self.policy,
            self.draw_label,
            self.rtsp.as_ref(),
            self.drops.clone(),
        )?;
        if let Some(video) = &video {
            video.start()?;
        }
        Ok(video)
    }
}

/// Builds and starts the output pipeline and its thread.
#[allow(clippy::too_many_arguments)]
fn start_output(
    pipeline: &PipelineConfig,
    live: bool,
    policy: WhenFull,
    draw_label: bool,
    rtsp: Option<&RtspServer>,
    grace: Duration,
    input: Receiver<Processed>,
    stats: Arc<PipelineStats>,
    drops: &HopDrops,
) -> Result<JoinHandle<()>, String> {
    let recipe = OutputRecipe {
        pipeline: pipeline.clone(),
        live,
        policy,
        draw_label,
        rtsp: rtsp.map(RtspServer::mounts),
        drops: drops.output.clone(),
    };
    let video = recipe.start()?;
    let mut targets = Vec::new();
    for item in &pipeline.metadata {
        let MetadataConfig::Jsonl(jsonl) = item;
        targets.push(match &jsonl.path {
            Some(path) => JsonlTarget::open(path)?,
            None => JsonlTarget::Stdout,
        });
    }
    let drops = HopDrops {
        input: drops.input.clone(),
        output: drops.output.clone(),
    };
    std::thread::Builder::new()
        .name(format!("out-{}", pipeline.name))
        .spawn(move || {
            let mut stage = OutputStage {
                recipe,
                video,
                down_until: None,
                failures: 0,
                targets,
                stats,
                drops,
                reported: Drops::default(),
            };
            for mut processed in input.iter() {
                stage.publish(&mut processed);
            }
            stage.finish(grace);
        })
        .map_err(|e| {
            format!(
                "cannot start the output thread of pipeline {}: {e}",
                pipeline.name
            )
        })
}

/// A pipeline's output thread: publishes each frame and its metadata line, and rebuilds a
/// video output that failed (a full disk, a sink that errored) with backoff, so one bad
/// moment does not end publishing for the months the daemon runs.
struct OutputStage {
    recipe: OutputRecipe,
    video: Option<VideoOutput>,
    /// While set, the video output is down and is rebuilt at this instant.
    down_until: Option<Instant>,
    /// Consecutive failures, for the backoff.
    failures: u32,
    targets: Vec<JsonlTarget>,
    stats: Arc<PipelineStats>,
    drops: HopDrops,
    reported: Drops,
}

impl OutputStage {
    fn name(&self) -> &str {
        &self.recipe.pipeline.name
    }

    fn publish(&mut self, processed: &mut Processed) {
        self.publish_video(processed);
        self.stats
            .latency
            .record(processed.frame.captured.elapsed());
        if !self.targets.is_empty() {
            let total = Drops {
                input: self.drops.input.get(),
                output: self.drops.output.get(),
            };
            let since = Drops {
                input: total.input - self.reported.input,
                output: total.output - self.reported.output,
            };
            self.reported = total;
            let line = metadata::render(
                &self.recipe.pipeline.name,
                &self.recipe.pipeline.model,
                processed,
                since,
            );
            for target in &mut self.targets {
                if let Err(error) = target.write_line(&line) {
                    tracing::error!(pipeline = %self.recipe.pipeline.name, %error, "cannot write metadata");
                }
            }
        }
        self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
    }

    fn publish_video(&mut self, processed: &mut Processed) {
        if let Some(until) = self.down_until {
            if Instant::now() < until {
                self.drops.output.add();
                return;
            }
            self.down_until = None;
            match self.recipe.start() {
                Ok(video) => {
                    tracing::info!(pipeline = %self.name(), "output rebuilt");
                    self.video = video;
                }
                Err(error) => {
                    self.fail(error);
                    return;
                }
            }
        }
        let Some(video) = self.video.as_mut() else {
            return;
        };
        let result = match video.poll_error() {
            Some(error) => Err(error),
            None => video.push(processed),
        };
        match result {
            Ok(()) => self.failures = 0,
            Err(error) => {
                self.drops.output.add();
                self.fail(error);
            }
        }
    }

    /// Takes the output down and schedules its rebuild: 1 s, doubling up to 60 s.
    fn fail(&mut self, error: String) {
        if let Some(video) = self.video.take() {
            video.abort();
        }
        self.failures += 1;
        self.stats.output_restarts.fetch_add(1, Ordering::Relaxed);
        let delay =
            Duration::from_secs(1 << (self.failures - 1).min(6)).min(Duration::from_secs(60));
        tracing::error!(
            pipeline = %self.name(),
            %error,
            retry_in_s = delay.as_secs(),
            "output failed; rebuilding it (frames meanwhile are counted as output drops)"
        );
        self.down_until = Some(Instant::now() + delay);
    }

    fn finish(self, grace: Duration) {
        if let Some(video) = self.video
            && let Err(error) = video.finish(grace)
        {
            tracing::warn!(pipeline = %self.recipe.pipeline.name, %error, "output did not finish cleanly");
        }
    }
}
