//! What the control plane, the summaries and tests read of a running engine: each pipeline's
//! and worker's counters and state, shared read-only. Every read is an atomic load (the state
//! is behind a mutex the frame path never takes), so reading never slows or blocks a frame.

use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use super::output_stage::HopDrops;
use super::stats::{PipelineState, PipelineStats};
use super::worker::WorkerStats;
use crate::config::ModelRef;
use crate::frames::{DropCounter, HopSender};
use crate::media::rtsp_server::RtspServerStats;

/// Reads the current depth of a pipeline's first hop without keeping the hop open.
pub enum QueueProbe {
    /// The pipeline was never built.
    None,
    Frames(Weak<HopSender<crate::frames::Frame>>),
    Processed(Weak<HopSender<crate::frames::Processed>>),
}

impl QueueProbe {
    fn depth(&self) -> usize {
        match self {
            Self::None => 0,
            Self::Frames(hop) => hop.upgrade().map_or(0, |h| h.len()),
            Self::Processed(hop) => hop.upgrade().map_or(0, |h| h.len()),
        }
    }
}

/// A pipeline as the control plane and tests see it.
pub struct PipelineHandle {
    pub name: String,
    pub model: ModelRef,
    pub stats: Arc<PipelineStats>,
    /// Frames dropped at the first hop (source → model, or source → output without a model).
    pub input_drops: Arc<DropCounter>,
    /// Frames dropped after it, up to the encoder; always 0 without a model except for the
    /// encoder's own queue.
    pub output_drops: Arc<DropCounter>,
    queue: QueueProbe,
    /// The first hop's capacity; 0 for a pipeline that could not be built (it has no hop).
    capacity: usize,
    /// Whether it publishes video (so it has frames to show as snapshots).
    pub video: bool,
    /// Its published sinks (MQTT, Kafka), for the control plane.
    pub sinks: Vec<Arc<crate::publish::SinkShared>>,
    started: Instant,
}

impl PipelineHandle {
    pub fn new(
        name: String,
        model: ModelRef,
        stats: Arc<PipelineStats>,
        drops: &HopDrops,
        queue: QueueProbe,
        capacity: usize,
        video: bool,
    ) -> Self {
        Self {
            name,
            model,
            stats,
            input_drops: drops.input.clone(),
            output_drops: drops.output.clone(),
            queue,
            capacity,
            video,
            sinks: Vec::new(),
            started: Instant::now(),
        }
    }

    /// A pipeline that could not be built: it reports its state and zeros.
    pub fn failed(name: String, model: ModelRef, error: String) -> Self {
        let stats = Arc::new(PipelineStats::default());
        stats.set_state(PipelineState::Failed { error });
        let drops = HopDrops {
            input: Arc::new(DropCounter::default()),
            output: Arc::new(DropCounter::default()),
        };
        Self::new(name, model, stats, &drops, QueueProbe::None, 0, false)
    }

    /// The first hop's current depth and its capacity.
    pub fn queue_depth(&self) -> (usize, usize) {
        (self.queue.depth(), self.capacity)
    }

    /// Time since the engine started the pipeline.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn dropped(&self) -> u64 {
        self.input_drops.get() + self.output_drops.get()
    }

    pub fn report(&self) -> PipelineReport {
        // A pipeline that ended is measured over its own life.
        let seconds = match self.stats.ended_at() {
            Some(ended) => ended.saturating_duration_since(self.started),
            None => self.started.elapsed(),
        }
        .as_secs_f64();
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
            notes: self.stats.notes(),
        }
    }
}

/// An inference worker as the control plane sees it.
pub struct WorkerHandle {
    pub model: String,
    pub stats: Arc<WorkerStats>,
    /// The CUDA device the model runs on; `None` on the CPU.
    pub cuda_device: Option<usize>,
    /// A served model's client counters; `None` for a model run here.
    pub remote: Option<Arc<crate::runtime::remote::RemoteStats>>,
}

/// Everything the control plane reads of a running engine, at one moment: a reload makes a
/// new one (the handles of pipelines it left alone are shared, counters and all).
pub struct EngineView {
    pub(super) pipelines: Vec<Arc<PipelineHandle>>,
    pub(super) workers: Vec<Arc<WorkerHandle>>,
    pub(super) rtsp_port: Option<u16>,
    pub(super) rtsp_clients: Option<Arc<RtspServerStats>>,
    pub(super) brokers: Vec<Arc<crate::publish::Outbox>>,
}

impl EngineView {
    pub(super) fn empty() -> Self {
        Self {
            pipelines: Vec::new(),
            workers: Vec::new(),
            rtsp_port: None,
            rtsp_clients: None,
            brokers: Vec::new(),
        }
    }

    /// Every pipeline of the configuration, in its order, built or not.
    pub fn pipelines(&self) -> &[Arc<PipelineHandle>] {
        &self.pipelines
    }

    pub fn pipeline(&self, name: &str) -> Option<&Arc<PipelineHandle>> {
        self.pipelines.iter().find(|p| p.name == name)
    }

    /// One per model in use that loaded, in model-name order.
    pub fn workers(&self) -> &[Arc<WorkerHandle>] {
        &self.workers
    }

    pub fn worker_stats(&self, model: &str) -> Option<Arc<WorkerStats>> {
        self.workers
            .iter()
            .find(|w| w.model == model)
            .map(|w| w.stats.clone())
    }

    /// Every broker connection, in name order.
    pub fn brokers(&self) -> &[Arc<crate::publish::Outbox>] {
        &self.brokers
    }

    /// The RTSP server's port, when a pipeline publishes over RTSP.
    pub fn rtsp_port(&self) -> Option<u16> {
        self.rtsp_port
    }

    /// The RTSP server's clients, when a pipeline publishes over RTSP.
    pub fn rtsp_clients(&self) -> Option<&RtspServerStats> {
        self.rtsp_clients.as_deref()
    }
}

/// The engine's current view, shared with the control plane. Readers take a snapshot
/// ([`SharedView::current`]); only a reload writes, and the frame path never touches it.
#[derive(Clone)]
pub struct SharedView(Arc<RwLock<Arc<EngineView>>>);

impl SharedView {
    pub(super) fn new(view: EngineView) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(view))))
    }

    pub fn current(&self) -> Arc<EngineView> {
        match self.0.read() {
            Ok(view) => view.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) fn replace(&self, view: EngineView) {
        let view = Arc::new(view);
        match self.0.write() {
            Ok(mut current) => *current = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
    }
}

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
    /// Warnings about how it ended (a truncated input).
    pub notes: Vec<String>,
}

impl std::fmt::Display for PipelineReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        write!(
            f,
            "{}: {}; frames in {}, out {}, dropped {}; {:.1} fps; latency p50 {}, p99 {}",
            self.name,
            self.state,
            self.frames_in,
            self.frames_out,
            self.dropped,
            self.fps,
            ms(self.latency_p50_ms),
            ms(self.latency_p99_ms)
        )?;
        for note in &self.notes {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}
