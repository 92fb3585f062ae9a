//! One inference worker per (model, device), shared by every pipeline that names the model:
//! gathers a batch fairly across the pipelines' queues, runs it, and routes each result to
//! its pipeline's output hop, never waiting for one pipeline's output.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, TryRecvError};

use super::stats::{Loss, PipelineStats};
use super::stop::StopHandle;
use crate::frames::{Frame, HopReceiver, HopSender, Processed, SendOutcome};
use crate::runtime::{Admission, Annotation, BatchInference, FrameFailure, RemoteFailure};

/// Counters of one worker, for metrics and tests.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub batches: AtomicU64,
    pub frames: AtomicU64,
    /// Batches that held more than one frame: batching is doing its job.
    pub multi_frame_batches: AtomicU64,
    pub largest_batch: AtomicU64,
    pub failed_frames: AtomicU64,
    /// Batches by size: bucket `i` counts batches of at most [`BATCH_SIZE_BUCKETS`]`[i]`
    /// frames and more than the bucket before (the last one also takes everything above).
    batch_sizes: [AtomicU64; BATCH_SIZE_BUCKETS.len()],
    /// When the batch now running started, in microseconds since [`epoch`] plus one; 0 while
    /// the worker waits for frames. A batch that never ends is a wedged worker.
    busy_since_us: AtomicU64,
    /// Microseconds spent in batches that ended: with the wall time, how busy the worker's
    /// thread is (near 100 %, the thread itself is what limits the model's pipelines).
    busy_total_us: AtomicU64,
}

/// Upper edges of the batch-size histogram.
pub const BATCH_SIZE_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// A fixed instant to measure busy times from, the same for every worker.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl WorkerStats {
    fn begin_batch(&self, size: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.frames.fetch_add(size, Ordering::Relaxed);
        self.largest_batch.fetch_max(size, Ordering::Relaxed);
        if size > 1 {
            self.multi_frame_batches.fetch_add(1, Ordering::Relaxed);
        }
        let bucket = BATCH_SIZE_BUCKETS
            .iter()
            .position(|&edge| size <= edge)
            .unwrap_or(BATCH_SIZE_BUCKETS.len() - 1);
        self.batch_sizes[bucket].fetch_add(1, Ordering::Relaxed);
        let since = epoch().elapsed().as_micros() as u64 + 1;
        self.busy_since_us.store(since, Ordering::Relaxed);
    }

    fn end_batch(&self) {
        let since = self.busy_since_us.swap(0, Ordering::Relaxed);
        if since > 0 {
            let now = epoch().elapsed().as_micros() as u64 + 1;
            self.busy_total_us
                .fetch_add(now.saturating_sub(since), Ordering::Relaxed);
        }
    }

    /// Time spent in batches so far (the one running not included).
    pub fn busy_total(&self) -> Duration {
        Duration::from_micros(self.busy_total_us.load(Ordering::Relaxed))
    }

    /// How long the batch now running has taken; `None` while the worker waits for frames.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.busy_since_us.load(Ordering::Relaxed) {
            0 => None,
            since => {
                let now = epoch().elapsed().as_micros() as u64 + 1;
                Some(Duration::from_micros(now.saturating_sub(since)))
            }
        }
    }

    /// Batch counts per bucket of [`BATCH_SIZE_BUCKETS`] (not cumulative).
    pub fn batch_size_counts(&self) -> Vec<u64> {
        self.batch_sizes
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// One pipeline as the worker sees it.
pub struct Lane {
    pub pipeline: usize,
    pub name: String,
    pub input: HopReceiver<Frame>,
    pub output: HopSender<Processed>,
    /// Where frames the worker loses are counted.
    pub stats: Arc<PipelineStats>,
    /// Fails the pipeline when the worker can no longer serve it.
    pub stop: StopHandle,
}

#[derive(Debug, Clone)]
pub struct BatchPolicy {
    pub max_size: usize,
    pub max_wait: Duration,
}

/// A pipeline joining a worker: its lane, and how the model's results are drawn on its frames.
pub struct Join {
    pub lane: Lane,
    pub annotation: Annotation,
}

/// A lane, whether its input has closed, and the results waiting for room in its output hop.
///
/// The worker never waits on one pipeline's output: a result whose `block` output hop is full
/// waits here, and the lane takes no new frame until its results have gone, so the pipeline's
/// own queue (and then its source) slows down while every other lane goes on. At most one
/// batch's results wait per lane.
struct Queue {
    lane: Lane,
    closed: bool,
    waiting: VecDeque<Processed>,
    /// Frames sent to a served model whose results have not come back: the lane stays until
    /// they have.
    in_flight: u64,
}

impl Queue {
    /// Whether the lane takes frames this turn.
    fn takes_frames(&self) -> bool {
        !self.closed && self.waiting.is_empty()
    }

    /// Hands on the results that wait, in order, as far as the output hop has room.
    fn flush(&mut self) {
        while let Some(processed) = self.waiting.pop_front() {
            match self.lane.output.try_send(processed) {
                Ok(outcome) => self.count(&outcome),
                Err(back) => {
                    self.waiting.push_front(back);
                    return;
                }
            }
        }
    }

    /// Sends one result, or leaves it waiting behind those already waiting.
    fn deliver(&mut self, processed: Processed) {
        if !self.waiting.is_empty() {
            self.waiting.push_back(processed);
            return;
        }
        match self.lane.output.try_send(processed) {
            Ok(outcome) => self.count(&outcome),
            Err(back) => self.waiting.push_back(back),
        }
    }

    fn count(&self, outcome: &SendOutcome) {
        if *outcome == SendOutcome::Closed {
            self.lane.stats.lose(Loss::StageStopped, 1);
        }
    }

    /// Done: its input is closed and nothing waits to go out or to come back.
    fn is_done(&self) -> bool {
        self.closed && self.waiting.is_empty() && self.in_flight == 0
    }
}

/// Pipelines join through `joins` at any time (a reload adds them); each lane leaves once its
/// input is closed and drained, and its output hop is dropped then, so that pipeline's output
/// stage can finish. Runs until no lane is left and `joins` is closed.
///
/// Batches are gathered round robin, one frame per lane per turn, each batch starting at the
/// lane after the last one visited: under overload every pipeline gets the same share of the
/// model, whatever its position, and drops (at each pipeline's own queue) are spread likewise.
///
/// A panic in the model ends the worker: its frames are counted as lost and every pipeline it
/// serves fails with the panic's message (a model left half way through a batch is not to be
/// trusted with the next one).
pub fn run(
    model: &str,
    joins: Receiver<Join>,
    policy: BatchPolicy,
    mut inference: Box<dyn BatchInference>,
    stats: Arc<WorkerStats>,
) {
    if inference.pipelined().is_some() {
        return run_pipelined(model, joins, policy, inference, stats);
    }
    let max_size = policy.max_size.max(1);
    let mut queues: Vec<Queue> = Vec::new();
    let mut joins = Some(joins);
    // The lane the next turn starts at.
    let mut next_lane = 0;
    loop {
        retire_done(&mut queues);
        if !admit(&mut joins, &mut queues, inference.as_mut()) {
            return;
        }
        let mut batch = Vec::new();
        gather_round_robin(&mut queues, &mut next_lane, &mut batch, max_size);
        if batch.is_empty() {
            // Nothing queued: sleep until some lane has a frame (or closes) or room for what
            // waits, or a pipeline joins.
            wait_any(&queues, joins.as_ref(), None, None);
            continue;
        }
        let deadline = Instant::now() + policy.max_wait;
        while batch.len() < max_size && wait_any(&queues, None, None, Some(deadline)) {
            let before = batch.len();
            gather_round_robin(&mut queues, &mut next_lane, &mut batch, max_size);
            // Woken without a frame to take (a lane closed, an output got room): run what we
            // have, don't spin.
            if batch.len() == before {
                break;
            }
        }
        if let Err(panic) = run_batch(model, &mut queues, batch, inference.as_mut(), &stats) {
            fail_every_lane(model, &mut queues, joins.take(), &panic);
            return;
        }
    }
}

/// [`run`] for a model whose batches go to a server ([`Pipelined`]): batches are submitted
/// without waiting, up to the model's `max_in_flight`, and their results routed as they come
/// back. While the model cannot take more, frames wait in each pipeline's queue (whose
/// `when_full` decides what goes); while its server cannot take requests at all, the
/// pipelines show `waiting` and the frames that reach the model are dropped, counted as
/// `remote unavailable`.
fn run_pipelined(
    model: &str,
    joins: Receiver<Join>,
    policy: BatchPolicy,
    mut inference: Box<dyn BatchInference>,
    stats: Arc<WorkerStats>,
) {
    let max_size = policy.max_size.max(1);
    let mut queues: Vec<Queue> = Vec::new();
    let mut joins = Some(joins);
    let mut next_lane = 0;
    let wakeups = match inference.pipelined() {
        Some(pipelined) => pipelined.wakeups(),
        None => return,
    };
    // Why the pipelines were last marked waiting, while they are.
    let mut marked: Option<String> = None;
    loop {
        retire_done(&mut queues);
        if !admit(&mut joins, &mut queues, inference.as_mut()) {
            return;
        }
        let collected = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inference
                .pipelined()
                .map(|served| (served.collect(), served.admission()))
        }));
        let (results, admission) = match collected {
            Ok(Some(collected)) => collected,
            Ok(None) => return,
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                for queue in &queues {
                    lose_at_output(&queue.lane, Loss::WorkerStopped, queue.in_flight);
                }
                fail_every_lane(model, &mut queues, joins.take(), &message);
                return;
            }
        };
        route_pipelined(model, &mut queues, results, &stats);
        mark_waiting(model, &queues, &admission, &mut marked);
        match admission {
            Admission::Full => {
                // Only what frees a slot (a batch back), room for waiting results, or a join.
                wait_for(&queues, joins.as_ref(), &wakeups, false);
            }
            Admission::Waiting(_) => {
                let mut dropped = Vec::new();
                gather_round_robin(
                    &mut queues,
                    &mut next_lane,
                    &mut dropped,
                    MAX_DROPPED_AT_ONCE,
                );
                if dropped.is_empty() {
                    wait_for(&queues, joins.as_ref(), &wakeups, true);
                }
                for frame in dropped {
                    if let Some(queue) = queues.iter().find(|q| q.lane.pipeline == frame.pipeline) {
                        lose_at_output(&queue.lane, Loss::RemoteUnavailable, 1);
                    }
                }
            }
            Admission::Open => {
                let mut batch = Vec::new();
                gather_round_robin(&mut queues, &mut next_lane, &mut batch, max_size);
                if batch.is_empty() {
                    wait_for(&queues, joins.as_ref(), &wakeups, true);
                    continue;
                }
                let deadline = Instant::now() + policy.max_wait;
                while batch.len() < max_size && wait_any(&queues, None, None, Some(deadline)) {
                    let before = batch.len();
                    gather_round_robin(&mut queues, &mut next_lane, &mut batch, max_size);
                    if batch.len() == before {
                        break;
                    }
                }
                for frame in &batch {
                    if let Some(queue) = queues
                        .iter_mut()
                        .find(|q| q.lane.pipeline == frame.pipeline)
                    {
                        queue.in_flight += 1;
                    }
                }
                stats.begin_batch(batch.len() as u64);
                let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if let Some(served) = inference.pipelined() {
                        served.submit(batch);
                    }
                }));
                stats.end_batch();
                if let Err(panic) = sent {
                    let message = panic_message(panic.as_ref());
                    for queue in &queues {
                        lose_at_output(&queue.lane, Loss::WorkerStopped, queue.in_flight);
                    }
                    fail_every_lane(model, &mut queues, joins.take(), &message);
                    return;
                }
            }
        }
    }
}

/// At most this many frames are dropped per turn while a served model waits, so the worker
/// still looks at its wakeups and joins in between.
const MAX_DROPPED_AT_ONCE: usize = 64;

/// Marks every lane's pipeline `waiting` (with why) while the served model cannot take
/// requests, and clears the mark once it can.
fn mark_waiting(model: &str, queues: &[Queue], admission: &Admission, marked: &mut Option<String>) {
    let reason = match admission {
        Admission::Waiting(reason) => Some(reason.clone()),
        Admission::Open | Admission::Full => None,
    };
    if reason.is_none() && marked.is_none() {
        return;
    }
    // Every turn while waiting: a pipeline that joined meanwhile is marked too.
    for queue in queues {
        queue.lane.stats.set_model_waiting(reason.clone());
    }
    if reason != *marked {
        match &reason {
            Some(why) => {
                tracing::warn!(model, reason = %why, "served model unavailable; its pipelines wait")
            }
            None => tracing::info!(model, "served model available again; its pipelines resume"),
        }
    }
    *marked = reason;
}

/// Routes a served model's results, each frame no longer in flight for its lane.
fn route_pipelined(
    model: &str,
    queues: &mut [Queue],
    results: Vec<Result<Processed, FrameFailure>>,
    stats: &WorkerStats,
) {
    if results.is_empty() {
        return;
    }
    for result in &results {
        let pipeline = match result {
            Ok(processed) => processed.frame.pipeline,
            Err(failure) => failure.frame.pipeline,
        };
        if let Some(queue) = queues.iter_mut().find(|q| q.lane.pipeline == pipeline) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
        }
    }
    route(model, queues, results, stats);
}

/// Sleeps until a served model has news (`wakeups`), a lane whose results wait has room, a
/// pipeline joins, or (with `frames`) a lane has a frame or closes.
fn wait_for(
    queues: &[Queue],
    joins: Option<&Receiver<Join>>,
    wakeups: &Receiver<()>,
    frames: bool,
) {
    if frames {
        wait_any(queues, joins, Some(wakeups), None);
        return;
    }
    let mut select = Select::new();
    for queue in queues.iter().filter(|q| !q.waiting.is_empty()) {
        select.send(queue.lane.output.channel());
    }
    if let Some(joins) = joins {
        select.recv(joins);
    }
    select.recv(wakeups);
    select.ready();
    // A wakeup is a bare signal: take it, or the next wait would return at once.
    while wakeups.try_recv().is_ok() {}
}

/// Drops the lanes that are done, flushing what waits in the others first.
fn retire_done(queues: &mut Vec<Queue>) {
    for queue in queues.iter_mut() {
        queue.flush();
    }
    queues.retain(|queue| {
        if queue.is_done() {
            tracing::debug!(pipeline = %queue.lane.name, "input closed; worker lane done");
        }
        !queue.is_done()
    });
}

/// Takes the pipelines waiting to join (blocking for one when there is no lane at all);
/// false when there is no lane and none can join any more.
fn admit(
    joins: &mut Option<Receiver<Join>>,
    queues: &mut Vec<Queue>,
    inference: &mut dyn BatchInference,
) -> bool {
    loop {
        let Some(receiver) = joins.as_ref() else {
            return !queues.is_empty();
        };
        let joined = if queues.is_empty() {
            receiver.recv().map_err(|_| TryRecvError::Disconnected)
        } else {
            receiver.try_recv()
        };
        match joined {
            Ok(join) => {
                inference.attach(join.lane.pipeline, &join.annotation);
                queues.push(Queue {
                    lane: join.lane,
                    closed: false,
                    waiting: VecDeque::new(),
                    in_flight: 0,
                });
            }
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => *joins = None,
        }
    }
}

/// Runs one batch and routes each result to its pipeline's lane; the panic's message when the
/// model panicked (the batch's frames are then counted as lost).
fn run_batch(
    model: &str,
    queues: &mut [Queue],
    batch: Vec<Frame>,
    inference: &mut dyn BatchInference,
    stats: &WorkerStats,
) -> Result<(), String> {
    let mut sizes: Vec<(usize, u64)> = Vec::new();
    for frame in &batch {
        match sizes
            .iter_mut()
            .find(|(pipeline, _)| *pipeline == frame.pipeline)
        {
            Some((_, count)) => *count += 1,
            None => sizes.push((frame.pipeline, 1)),
        }
    }
    stats.begin_batch(batch.len() as u64);
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inference.process(batch)));
    stats.end_batch();
    let results = match ran {
        Ok(results) => results,
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            for (pipeline, count) in sizes {
                if let Some(queue) = queues.iter().find(|q| q.lane.pipeline == pipeline) {
                    lose_at_output(&queue.lane, Loss::WorkerStopped, count);
                }
            }
            return Err(message);
        }
    };
    route(model, queues, results, stats);
    Ok(())
}

/// Hands each result to its pipeline's lane; a failed frame is counted lost there, under the
/// reason its failure gives.
fn route(
    model: &str,
    queues: &mut [Queue],
    results: Vec<Result<Processed, FrameFailure>>,
    stats: &WorkerStats,
) {
    for result in results {
        match result {
            Ok(processed) => {
                let pipeline = processed.frame.pipeline;
                match queues.iter_mut().find(|q| q.lane.pipeline == pipeline) {
                    Some(queue) => queue.deliver(processed),
                    // A defect: a lane leaves only once its frames are all home.
                    None => tracing::error!(model, pipeline, "a result for no lane was dropped"),
                }
            }
            Err(FrameFailure { frame, error }) => {
                stats.failed_frames.fetch_add(1, Ordering::Relaxed);
                let lane = queues
                    .iter()
                    .map(|q| &q.lane)
                    .find(|lane| lane.pipeline == frame.pipeline);
                let loss = match error.remote_failure() {
                    None => Loss::InferenceFailed,
                    Some(RemoteFailure::Timeout) => Loss::RemoteTimeout,
                    Some(RemoteFailure::Unavailable) => Loss::RemoteUnavailable,
                    Some(RemoteFailure::Error) => Loss::RemoteError,
                };
                if let Some(lane) = lane {
                    lose_at_output(lane, loss, 1);
                }
                if error.remote_failure().is_some() {
                    // One line per failed request is logged where it failed, not per frame.
                    tracing::debug!(model, seq = frame.seq, %error, "a served model's frame was dropped");
                } else {
                    tracing::error!(
                        model,
                        pipeline = lane.map(|l| l.name.as_str()).unwrap_or("?"),
                        seq = frame.seq,
                        %error,
                        "inference failed for a frame"
                    );
                }
            }
        }
    }
}

/// Frames that never reach the output hop count as dropped there, with why.
fn lose_at_output(lane: &Lane, loss: Loss, frames: u64) {
    for _ in 0..frames {
        lane.output.drops().add();
    }
    lane.stats.lose(loss, frames);
}

/// The worker is done for: every lane's pipeline fails with the reason, what waits in the
/// lanes is counted, and no pipeline can join any more.
fn fail_every_lane(
    model: &str,
    queues: &mut Vec<Queue>,
    joins: Option<Receiver<Join>>,
    panic: &str,
) {
    let reason = format!("the model worker for '{model}' panicked: {panic}");
    tracing::error!(model, panic, "model worker panicked; its pipelines fail");
    // Pipelines already waiting to join fail too, rather than wait for a worker that is gone.
    let late = joins
        .map(|joins| joins.try_iter().collect::<Vec<_>>())
        .unwrap_or_default();
    for queue in queues.drain(..) {
        let waiting = queue.waiting.len() as u64;
        lose_at_output(&queue.lane, Loss::WorkerStopped, waiting);
        queue.lane.stop.fail(reason.clone());
    }
    for join in late {
        join.lane.stop.fail(reason.clone());
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// Takes one frame per lane per turn, starting at `next_lane`, until the batch is full or a
/// whole turn finds nothing; `next_lane` moves past every lane visited. Lanes whose results
/// wait for room take nothing. Marks closed lanes.
fn gather_round_robin(
    queues: &mut [Queue],
    next_lane: &mut usize,
    batch: &mut Vec<Frame>,
    max_size: usize,
) {
    let count = queues.len();
    loop {
        let mut took_any = false;
        for _ in 0..count {
            if batch.len() >= max_size {
                return;
            }
            let index = *next_lane % count;
            *next_lane = (index + 1) % count;
            let queue = &mut queues[index];
            if !queue.takes_frames() {
                continue;
            }
            match queue.lane.input.try_recv() {
                Ok(frame) => {
                    batch.push(frame);
                    took_any = true;
                }
                Err(TryRecvError::Disconnected) => queue.closed = true,
                Err(TryRecvError::Empty) => {}
            }
        }
        if !took_any {
            return;
        }
    }
}

/// Waits until a lane that takes frames has one (or closed), a lane whose results wait has
/// room for them, or a pipeline joins, at most until `deadline`; false on timeout.
fn wait_any(
    queues: &[Queue],
    joins: Option<&Receiver<Join>>,
    wakeups: Option<&Receiver<()>>,
    deadline: Option<Instant>,
) -> bool {
    let mut select = Select::new();
    let mut operations = 0;
    for queue in queues {
        // A closed input is always ready: the loop then removes its lane.
        if queue.waiting.is_empty() {
            select.recv(&queue.lane.input);
        } else {
            select.send(queue.lane.output.channel());
        }
        operations += 1;
    }
    if let Some(joins) = joins {
        select.recv(joins);
        operations += 1;
    }
    if let Some(wakeups) = wakeups {
        select.recv(wakeups);
        operations += 1;
    }
    if operations == 0 {
        return false;
    }
    let ready = match deadline {
        Some(deadline) => select.ready_deadline(deadline).is_ok(),
        None => {
            select.ready();
            true
        }
    };
    // A wakeup is a bare signal: take it, or the next wait would return at once.
    if let Some(wakeups) = wakeups {
        while wakeups.try_recv().is_ok() {}
    }
    ready
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use gstreamer as gst;

    use super::*;
    use crate::config::WhenFull;
    use crate::frames::{FrameLayout, PixelFormat, Pixels, hop};

    fn frame(pipeline: usize, seq: u64) -> Frame {
        let fps = gst::Fraction::new(0, 1);
        Frame {
            pipeline,
            seq,
            pts: None,
            duration: None,
            captured: Instant::now(),
            resumed: false,
            width: 2,
            height: 2,
            fps,
            layout: FrameLayout::standard(PixelFormat::Rgb, 2, 2, fps).unwrap(),
            pixels: Pixels::Host(gst::Buffer::with_size(16).unwrap()),
        }
    }

    fn lane(
        pipeline: usize,
        name: impl Into<String>,
        input: HopReceiver<Frame>,
        output: HopSender<Processed>,
    ) -> Lane {
        Lane {
            pipeline,
            name: name.into(),
            input,
            output,
            stats: Arc::new(PipelineStats::default()),
            stop: StopHandle::new(),
        }
    }

    /// The lanes, already waiting to join a worker that is then told no more will come.
    fn joined(lanes: Vec<Lane>) -> Receiver<Join> {
        let (join, joins) = crossbeam_channel::unbounded();
        for lane in lanes {
            let annotation = Annotation {
                overlay: Default::default(),
                raw_depth: false,
                picture: true,
            };
            join.send(Join { lane, annotation }).unwrap();
        }
        joins
    }

    /// Records which pipelines each batch held; passes frames through.
    struct Recorder(Arc<Mutex<Vec<Vec<usize>>>>);

    impl BatchInference for Recorder {
        fn process(&mut self, frames: Vec<Frame>) -> Vec<Result<Processed, FrameFailure>> {
            self.0
                .lock()
                .unwrap()
                .push(frames.iter().map(|f| f.pipeline).collect());
            frames
                .into_iter()
                .map(|f| Ok(Processed::passthrough(f)))
                .collect()
        }
    }

    #[test]
    fn a_busy_pipeline_cannot_starve_a_quiet_one_and_results_go_home() {
        gst::init().unwrap();
        let (busy_tx, busy_rx, _) = hop(64, WhenFull::Block);
        let (quiet_tx, quiet_rx, _) = hop(64, WhenFull::Block);
        for seq in 0..40 {
            busy_tx.send(frame(0, seq));
        }
        for seq in 0..3 {
            quiet_tx.send(frame(1, seq));
        }
        drop((busy_tx, quiet_tx));
        let (busy_out, busy_results, _) = hop(64, WhenFull::Block);
        let (quiet_out, quiet_results, _) = hop(64, WhenFull::Block);
        let batches = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(WorkerStats::default());
        run(
            "test",
            joined(vec![
                lane(0, "busy", busy_rx, busy_out),
                lane(1, "quiet", quiet_rx, quiet_out),
            ]),
            BatchPolicy {
                max_size: 4,
                max_wait: Duration::from_millis(1),
            },
            Box::new(Recorder(batches.clone())),
            stats.clone(),
        );
        let batches = batches.lock().unwrap();
        // The quiet pipeline's three frames ride in the first batches, not after the 40.
        let quiet_done = batches
            .iter()
            .position(|b| b.contains(&1))
            .expect("the quiet pipeline was served");
        assert!(
            quiet_done <= 1,
            "quiet frames waited until batch {quiet_done}: {batches:?}"
        );
        assert!(batches.iter().all(|b| b.len() <= 4));
        assert_eq!(stats.frames.load(Ordering::Relaxed), 43);
        let seqs = |rx: &Receiver<Processed>| {
            rx.try_iter()
                .map(|p| (p.frame.pipeline, p.frame.seq))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            seqs(&busy_results),
            (0..40).map(|s| (0, s)).collect::<Vec<_>>()
        );
        assert_eq!(
            seqs(&quiet_results),
            (0..3).map(|s| (1, s)).collect::<Vec<_>>()
        );
    }

    /// Takes `delay` per batch; passes frames through.
    struct Slow(Duration);

    impl BatchInference for Slow {
        fn process(&mut self, frames: Vec<Frame>) -> Vec<Result<Processed, FrameFailure>> {
            std::thread::sleep(self.0);
            frames
                .into_iter()
                .map(|f| Ok(Processed::passthrough(f)))
                .collect()
        }
    }

    #[test]
    fn the_worker_counts_the_time_its_batches_take() {
        gst::init().unwrap();
        let (tx, rx, _) = hop(64, WhenFull::Block);
        for seq in 0..6 {
            tx.send(frame(0, seq));
        }
        drop(tx);
        let (out, _results, _) = hop(64, WhenFull::Block);
        let stats = Arc::new(WorkerStats::default());
        let lane = lane(0, "p", rx, out);
        let policy = BatchPolicy {
            max_size: 2,
            max_wait: Duration::from_millis(1),
        };
        run(
            "test",
            joined(vec![lane]),
            policy,
            Box::new(Slow(Duration::from_millis(20))),
            stats.clone(),
        );
        let batches = stats.batches.load(Ordering::Relaxed);
        assert!(batches >= 3, "{batches} batches");
        // Each batch slept 20 ms: the busy time is at least that for each, and no batch is
        // left open.
        let busy = stats.busy_total();
        assert!(busy >= Duration::from_millis(20 * batches), "{busy:?}");
        assert!(stats.busy_for().is_none());
    }

    #[test]
    fn every_lane_gets_its_turn_whatever_the_batch_size() {
        gst::init().unwrap();
        // Eight busy pipelines, batches of three: with the turn kept across batches, no lane
        // is ever more than one frame ahead of another.
        let lanes = 8;
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        let mut queues = Vec::new();
        for pipeline in 0..lanes {
            let (tx, rx, _) = hop(64, WhenFull::Block);
            for seq in 0..30 {
                tx.send(frame(pipeline, seq));
            }
            let (out, results, _) = hop(64, WhenFull::Block);
            inputs.push(tx);
            outputs.push(results);
            queues.push(lane(pipeline, format!("p{pipeline}"), rx, out));
        }
        drop(inputs);
        let batches = Arc::new(Mutex::new(Vec::new()));
        run(
            "test",
            joined(queues),
            BatchPolicy {
                max_size: 3,
                max_wait: Duration::from_millis(1),
            },
            Box::new(Recorder(batches.clone())),
            Arc::new(WorkerStats::default()),
        );
        let batches = batches.lock().unwrap();
        let mut served = vec![0i64; lanes];
        for batch in batches.iter() {
            assert!(batch.len() <= 3);
            for &pipeline in batch {
                served[pipeline] += 1;
            }
            let (lo, hi) = (served.iter().min().unwrap(), served.iter().max().unwrap());
            assert!(hi - lo <= 1, "unfair after {batch:?}: {served:?}");
        }
        assert_eq!(served, vec![30; lanes]);
        for results in &outputs {
            assert_eq!(results.try_iter().count(), 30);
        }
    }

    #[test]
    fn a_full_output_holds_up_its_own_lane_and_no_other() {
        gst::init().unwrap();
        // A finite pipeline whose output takes nothing (its hop holds one result), beside a
        // busy one: the worker must keep serving the busy one, not wait on the stuck output.
        let (stuck_tx, stuck_rx, _) = hop(64, WhenFull::Block);
        let (busy_tx, busy_rx, _) = hop(64, WhenFull::Block);
        for seq in 0..20 {
            stuck_tx.send(frame(0, seq));
            busy_tx.send(frame(1, seq));
        }
        let (stuck_out, stuck_results, _) = hop(1, WhenFull::Block);
        let (busy_out, busy_results, _) = hop(64, WhenFull::Block);
        let (join, joins) = crossbeam_channel::unbounded();
        for lane in [
            lane(0, "stuck", stuck_rx, stuck_out),
            lane(1, "busy", busy_rx, busy_out),
        ] {
            let annotation = Annotation {
                overlay: Default::default(),
                raw_depth: false,
                picture: true,
            };
            join.send(Join { lane, annotation }).unwrap();
        }
        let stats = Arc::new(WorkerStats::default());
        let worker = std::thread::spawn({
            let stats = stats.clone();
            move || {
                let policy = BatchPolicy {
                    max_size: 2,
                    max_wait: Duration::from_millis(1),
                };
                run("test", joins, policy, Box::new(Slow(Duration::ZERO)), stats)
            }
        });
        let mut busy = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while busy.len() < 20 && Instant::now() < deadline {
            if let Ok(p) = busy_results.recv_timeout(Duration::from_millis(100)) {
                busy.push(p.frame.seq);
            }
        }
        assert_eq!(
            busy,
            (0..20).collect::<Vec<_>>(),
            "the busy lane was held up"
        );
        // The stuck pipeline lost nothing: its results wait, in order, for its output.
        drop((stuck_tx, busy_tx, join));
        let stuck: Vec<u64> = stuck_results.iter().map(|p| p.frame.seq).collect();
        assert_eq!(stuck, (0..20).collect::<Vec<_>>());
        worker.join().unwrap();
        assert_eq!(stats.frames.load(Ordering::Relaxed), 40);
    }

    /// Panics on the batch that holds frame `seq` of any pipeline.
    struct PanicsAt(u64);

    impl BatchInference for PanicsAt {
        fn process(&mut self, frames: Vec<Frame>) -> Vec<Result<Processed, FrameFailure>> {
            if frames.iter().any(|f| f.seq == self.0) {
                panic!("tensor shape mismatch in the test model");
            }
            frames
                .into_iter()
                .map(|f| Ok(Processed::passthrough(f)))
                .collect()
        }
    }

    #[test]
    fn a_panicking_model_fails_its_pipelines_and_counts_the_frames() {
        gst::init().unwrap();
        let (tx, rx, _) = hop(64, WhenFull::Block);
        let (other_tx, other_rx, _) = hop(64, WhenFull::Block);
        for seq in 0..4 {
            tx.send(frame(0, seq));
        }
        let (out, results, output_drops) = hop(64, WhenFull::Block);
        let (other_out, _other_results, _) = hop(64, WhenFull::Block);
        let (panicking, other) = (lane(0, "p", rx, out), lane(1, "q", other_rx, other_out));
        let (stats, stop) = (panicking.stats.clone(), panicking.stop.clone());
        let other_stop = other.stop.clone();
        run(
            "depth",
            joined(vec![panicking, other]),
            BatchPolicy {
                max_size: 1,
                max_wait: Duration::from_millis(1),
            },
            Box::new(PanicsAt(2)),
            Arc::new(WorkerStats::default()),
        );
        // The worker returned by itself, with both lanes' senders still open.
        assert_eq!(results.try_iter().count(), 2, "frames 0 and 1 went home");
        assert_eq!(stats.losses().get("model worker stopped"), Some(&1));
        assert_eq!(output_drops.get(), 1);
        for stop in [&stop, &other_stop] {
            let fault = stop.fault().expect("the pipeline was failed");
            assert!(
                fault.contains("'depth' panicked: tensor shape mismatch"),
                "{fault}"
            );
            assert!(stop.is_triggered());
        }
        // The frames still queued find the hop closed, and are counted there.
        assert_eq!(tx.send(frame(0, 9)), SendOutcome::Closed);
        drop(other_tx);
    }
}
