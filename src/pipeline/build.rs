//! The second of the engine's three steps: a pipeline's plan made into its pieces (hops,
//! output, metadata targets, the supervisor of its source, its lane into the model's worker),
//! with nothing running yet but the output pipeline. A piece that cannot be made is a typed
//! error for that pipeline alone.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::PipelineError;
use super::metadata::{JsonlTarget, MetadataTarget};
use super::output_stage::{HopDrops, OutputStage};
use super::plan::PipelinePlan;
use super::stats::{Loss, Observed, OutputHealth, PipelineState, PipelineStats};
use super::stop::{StopHandle, StopSignal};
use super::supervisor::Supervisor;
use super::view::{PipelineHandle, QueueProbe};
use super::worker::Lane;
use crate::config::MetadataConfig;
use crate::frames::{
    DropCounter, Frame, FrameIdentity, GiveUp, HopReceiver, HopSender, PixelFormat, Processed,
    SendOutcome, hop,
};
use crate::media::rtsp_server::RtspMounts;
use crate::publish::{EventFeed, OutputEvent, Sink, StateEvent};
use crate::runtime::FrameStager;

/// One pipeline, built and ready to spawn.
pub struct Pieces {
    pub name: String,
    pub stats: Arc<PipelineStats>,
    pub supervisor: Supervisor,
    /// Where the source's frames go: the model's input hop, or straight to the output.
    pub feed: Feed,
    pub output: OutputStage,
    pub output_input: HopReceiver<Processed>,
    /// The pipeline's lane into its model's worker, and the model's name.
    pub lane: Option<(String, Lane)>,
    pub handle: PipelineHandle,
}

/// A pipeline's share of the daemon's publishing: one published sink per metadata item
/// (`None` for the `jsonl` ones), and where its events go.
#[derive(Default)]
pub struct Published {
    pub sinks: Vec<Option<Sink>>,
    pub events: EventFeed,
}

/// The first hop after the source.
pub enum Feed {
    /// Frames are staged on the model's device in the source's own thread, then queued.
    ToModel {
        hop: Arc<HopSender<Frame>>,
        stager: Arc<dyn FrameStager>,
        /// Frames that could not be staged count as dropped here.
        drops: Arc<DropCounter>,
    },
    /// Without a model the source feeds the output hop directly: one hop, one policy.
    ToOutput(Arc<HopSender<Processed>>),
}

/// What a source delivers when no model converts its frames: the 4:2:0 formats encoders take,
/// as decoders make them, or RGB as it came.
const PASSTHROUGH_FORMATS: [PixelFormat; 3] =
    [PixelFormat::I420, PixelFormat::Nv12, PixelFormat::Rgb];

impl Feed {
    /// The formats the source should deliver.
    pub fn formats(&self) -> Vec<PixelFormat> {
        match self {
            Feed::ToModel { stager, .. } => stager.formats(),
            Feed::ToOutput(_) => PASSTHROUGH_FORMATS.to_vec(),
        }
    }

    /// The function the source calls for every frame; it counts the frame in and, for a model,
    /// stages it on the model's device (here, in the source's streaming thread).
    pub fn deliver(
        self,
        pipeline: String,
        stats: Arc<PipelineStats>,
    ) -> impl Fn(Frame) + Send + Sync + 'static {
        move |mut frame| {
            stats.frames_in.fetch_add(1, Ordering::Relaxed);
            let outcome = match &self {
                Feed::ToModel { hop, stager, drops } => match stager.stage(&mut frame) {
                    Ok(()) => hop.send(frame),
                    Err(error) => {
                        drops.add();
                        stats.lose(Loss::InferenceFailed, 1);
                        tracing::error!(pipeline = %pipeline, %error, "frame dropped");
                        return;
                    }
                },
                Feed::ToOutput(hop) => hop.send(Processed::passthrough(frame)),
            };
            match outcome {
                SendOutcome::Closed => stats.lose(Loss::StageStopped, 1),
                SendOutcome::GaveUp => stats.lose(Loss::Abandoned, 1),
                _ => {}
            }
        }
    }
}

/// Builds a pipeline's pieces; its output pipeline is started (so a broken sink is found
/// now), everything else waits for [`super::engine`] to spawn it.
pub fn build(
    plan: PipelinePlan,
    stager: Option<Arc<dyn FrameStager>>,
    rtsp: Option<RtspMounts>,
    stop: StopSignal,
    own: StopHandle,
    grace: Duration,
    published: Published,
) -> Result<Pieces, PipelineError> {
    let stats = Arc::new(PipelineStats::default());
    announce_events(&stats, &plan.name, published.events);
    // A send that waits for room lets go once the drain after a stop has been abandoned.
    let give_up: GiveUp = Arc::new({
        let stop = stop.clone();
        move || stop.abandoned()
    });
    let (out_tx, output_input, output_drops) = hop::<Processed>(plan.capacity, plan.when_full);
    let out_tx = out_tx.giving_up_when(give_up.clone());
    let lanes = LaneParts {
        stats: stats.clone(),
        stop: own,
        give_up,
    };
    let (feed, lane, drops, queue) = first_hop(&plan, stager, out_tx, output_drops, lanes)?;
    let sinks: Vec<_> = published
        .sinks
        .iter()
        .flatten()
        .map(|sink| sink.shared().clone())
        .collect();
    let targets = open_metadata(&plan.metadata, published.sinks)?;
    let output = OutputStage::start(
        plan.output.clone(),
        rtsp,
        plan.model_ref().to_string(),
        targets,
        stats.clone(),
        drops.clone(),
        plan.retry,
        stop.clone(),
    )?;
    let supervisor = Supervisor {
        name: plan.name.clone(),
        source: plan.source.clone(),
        formats: feed.formats(),
        identity: Arc::new(FrameIdentity::new(plan.id)),
        stats: stats.clone(),
        stop,
        grace,
    };
    let mut handle = PipelineHandle::new(
        plan.name.clone(),
        plan.model_ref(),
        stats.clone(),
        &drops,
        queue,
        plan.capacity,
        plan.output.has_video(),
    );
    handle.sinks = sinks;
    Ok(Pieces {
        name: plan.name,
        stats,
        supervisor,
        feed,
        output,
        output_input,
        lane,
        handle,
    })
}

/// What a pipeline's lane into its model's worker carries besides its hops.
struct LaneParts {
    stats: Arc<PipelineStats>,
    stop: StopHandle,
    give_up: GiveUp,
}

/// The pipeline's first hop and what it feeds: the model's worker (through the stager), or the
/// output directly without a model.
#[allow(clippy::type_complexity)]
fn first_hop(
    plan: &PipelinePlan,
    stager: Option<Arc<dyn FrameStager>>,
    out_tx: HopSender<Processed>,
    output_drops: Arc<DropCounter>,
    parts: LaneParts,
) -> Result<(Feed, Option<(String, Lane)>, HopDrops, QueueProbe), PipelineError> {
    Ok(match (&plan.model, stager) {
        (Some((model, _)), Some(stager)) => {
            let (in_tx, in_rx, input_drops) = hop::<Frame>(plan.capacity, plan.when_full);
            let in_tx = Arc::new(in_tx.giving_up_when(parts.give_up));
            let lane = Lane {
                pipeline: plan.id,
                name: plan.name.clone(),
                input: in_rx,
                output: out_tx,
                stats: parts.stats,
                stop: parts.stop,
            };
            let drops = HopDrops {
                input: input_drops,
                output: output_drops,
            };
            // Weak: the handle must not keep the hop open after the source is done.
            let queue = QueueProbe::Frames(Arc::downgrade(&in_tx));
            let feed = Feed::ToModel {
                hop: in_tx,
                stager,
                drops: drops.input.clone(),
            };
            (feed, Some((model.clone(), lane)), drops, queue)
        }
        (Some((model, _)), None) => return Err(PipelineError::ModelNotLoaded(model.clone())),
        (None, _) => {
            let out_tx = Arc::new(out_tx);
            let drops = HopDrops {
                input: output_drops,
                output: Arc::new(DropCounter::default()),
            };
            let queue = QueueProbe::Processed(Arc::downgrade(&out_tx));
            (Feed::ToOutput(out_tx), None, drops, queue)
        }
    })
}

/// One target per metadata item: a `jsonl` file (or stdout) opened here, or its published sink.
fn open_metadata(
    items: &[MetadataConfig],
    sinks: Vec<Option<Sink>>,
) -> Result<Vec<MetadataTarget>, PipelineError> {
    let mut sinks = sinks.into_iter();
    items
        .iter()
        .map(|item| match (item, sinks.next().flatten()) {
            (_, Some(sink)) => Ok(MetadataTarget::Published(sink)),
            (MetadataConfig::Jsonl(jsonl), None) => match &jsonl.path {
                Some(path) => JsonlTarget::open(path)
                    .map(MetadataTarget::Jsonl)
                    .map_err(|error| PipelineError::Metadata {
                        path: path.clone(),
                        reason: error.to_string(),
                    }),
                None => Ok(MetadataTarget::Jsonl(JsonlTarget::Stdout)),
            },
            (other, None) => Err(PipelineError::Unpublished {
                kind: other.kind(),
                broker: other.broker().unwrap_or_default().to_string(),
            }),
        })
        .collect()
}

/// Sends the pipeline's state changes and its outputs going down or coming back to the
/// brokers that carry events, starting with `starting`.
fn announce_events(stats: &PipelineStats, pipeline: &str, events: EventFeed) {
    if events.is_empty() {
        return;
    }
    let pipeline = pipeline.to_string();
    stats.observe(Box::new(move |observed| match observed {
        Observed::State(state) => events.state(&pipeline, &state_event(state)),
        Observed::Output(health) => events.output(&pipeline, &output_event(health)),
    }));
    stats.set_state(PipelineState::Starting);
}

/// A state as its event says it.
pub fn state_event(state: &PipelineState) -> StateEvent {
    let (reason, attempt) = match state {
        PipelineState::Stalled { since, attempt } => (
            Some(format!(
                "stalled: no frame for {:.1} s",
                since.elapsed().as_secs_f64()
            )),
            Some(*attempt),
        ),
        PipelineState::Reconnecting {
            attempt,
            last_error,
        } => (Some(last_error.clone()), Some(*attempt)),
        PipelineState::Failed { error } => (Some(error.clone()), None),
        PipelineState::Waiting { reason } => (Some(reason.clone()), None),
        PipelineState::Starting | PipelineState::Playing | PipelineState::Finished => (None, None),
    };
    StateEvent {
        state: state.name(),
        reason,
        attempt,
    }
}

fn output_event(health: &OutputHealth) -> OutputEvent {
    OutputEvent {
        output: health.output.clone(),
        up: health.up,
        reason: health.reason.clone(),
        error: health.error.clone(),
        failures: health.failures,
    }
}
