//! One inference worker per (model, device), shared by every pipeline that names the model:
//! gathers a batch fairly across the pipelines' queues, runs it, and routes each result to
//! its pipeline's output hop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};

use crate::frames::{Frame, HopSender, Processed};
use crate::runtime::{Annotation, BatchInference, FrameFailure};

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
        self.busy_since_us.store(0, Ordering::Relaxed);
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
    pub input: Receiver<Frame>,
    pub output: HopSender<Processed>,
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

/// Pipelines join through `joins` at any time (a reload adds them); each lane leaves once its
/// input is closed and drained, and its output hop is dropped then, so that pipeline's output
/// stage can finish. Runs until no lane is left and `joins` is closed.
pub fn run(
    model: &str,
    joins: Receiver<Join>,
    policy: BatchPolicy,
    mut inference: Box<dyn BatchInference>,
    stats: Arc<WorkerStats>,
) {
    let max_size = policy.max_size.max(1);
    let mut lanes: Vec<Lane> = Vec::new();
    let mut joins = Some(joins);
    // Where the next round-robin pass starts, so no lane is always served first.
    let mut next_lane = 0;
    loop {
        let Some(first) = (match wait_for_frame(&mut lanes, &mut joins) {
            Wait::Frame(frame) => Some(frame),
            Wait::Joined(join) => {
                inference.attach(join.lane.pipeline, &join.annotation);
                lanes.push(join.lane);
                None
            }
            Wait::LaneClosed => None,
            Wait::Done => return,
        }) else {
            continue;
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + policy.max_wait;
        let mut waited = false;
        loop {
            let before = batch.len();
            gather_round_robin(&lanes, &mut next_lane, &mut batch, max_size);
            if batch.len() >= max_size || Instant::now() >= deadline {
                break;
            }
            // Woken without a frame to take: a lane closed. Run what we have, don't spin.
            if waited && batch.len() == before {
                break;
            }
            // Wait a little for more frames, but never past the deadline.
            if !wait_any(&lanes, deadline) {
                break;
            }
            waited = true;
        }
        stats.begin_batch(batch.len() as u64);
        let results = inference.process(batch);
        stats.end_batch();
        route(model, &lanes, results, &stats);
    }
}

/// Sends each result to its pipeline's output hop; a frame that failed is logged and counted.
fn route(
    model: &str,
    lanes: &[Lane],
    results: Vec<Result<Processed, FrameFailure>>,
    stats: &WorkerStats,
) {
    for result in results {
        let processed = match result {
            Ok(processed) => processed,
            Err(FrameFailure { frame, error }) => {
                stats.failed_frames.fetch_add(1, Ordering::Relaxed);
                let lane = lanes.iter().find(|l| l.pipeline == frame.pipeline);
                tracing::error!(
                    model,
                    pipeline = lane.map(|l| l.name.as_str()).unwrap_or("?"),
                    seq = frame.seq,
                    %error,
                    "inference failed for a frame"
                );
                continue;
            }
        };
        if let Some(lane) = lanes
            .iter()
            .find(|l| l.pipeline == processed.frame.pipeline)
        {
            lane.output.send(processed);
        }
    }
}

/// What waiting for work brought.
enum Wait {
    Frame(Frame),
    Joined(Join),
    /// A lane's input closed and was drained; it was removed.
    LaneClosed,
    /// No lane is left and no pipeline can join any more.
    Done,
}

/// Blocks until some lane has a frame or a pipeline joins; removes lanes whose input closed
/// and is empty, and forgets `joins` once it is closed.
fn wait_for_frame(lanes: &mut Vec<Lane>, joins: &mut Option<Receiver<Join>>) -> Wait {
    if lanes.is_empty() && joins.is_none() {
        return Wait::Done;
    }
    // A pipeline waiting to join comes before more frames of the others.
    if let Some(Ok(join)) = joins.as_ref().map(Receiver::try_recv) {
        return Wait::Joined(join);
    }
    let mut select = Select::new();
    for lane in lanes.iter() {
        select.recv(&lane.input);
    }
    let join_index = joins.as_ref().map(|joins| select.recv(joins));
    let operation = select.select();
    let index = operation.index();
    if Some(index) == join_index {
        let received = joins.as_ref().map(|joins| operation.recv(joins));
        return match received {
            Some(Ok(join)) => Wait::Joined(join),
            _ => {
                *joins = None;
                Wait::LaneClosed
            }
        };
    }
    match operation.recv(&lanes[index].input) {
        Ok(frame) => Wait::Frame(frame),
        Err(_) => {
            let lane = lanes.remove(index);
            tracing::debug!(pipeline = %lane.name, "input closed; worker lane done");
            Wait::LaneClosed
        }
    }
}

/// Takes at most one frame per lane per pass until the batch is full or the lanes are empty.
fn gather_round_robin(
    lanes: &[Lane],
    next_lane: &mut usize,
    batch: &mut Vec<Frame>,
    max_size: usize,
) {
    loop {
        let mut took_any = false;
        for offset in 0..lanes.len() {
            if batch.len() >= max_size {
                return;
            }
            let index = (*next_lane + offset) % lanes.len();
            if let Ok(frame) = lanes[index].input.try_recv() {
                batch.push(frame);
                took_any = true;
            }
        }
        *next_lane = (*next_lane + 1) % lanes.len().max(1);
        if !took_any {
            return;
        }
    }
}

/// Waits until any lane has something (or closed) or the deadline passes; false on timeout.
fn wait_any(lanes: &[Lane], deadline: Instant) -> bool {
    let mut select = Select::new();
    for lane in lanes {
        select.recv(&lane.input);
    }
    select.ready_deadline(deadline).is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use gstreamer as gst;

    use super::*;
    use crate::config::WhenFull;
    use crate::frames::hop;

    fn frame(pipeline: usize, seq: u64) -> Frame {
        Frame {
            pipeline,
            seq,
            pts: None,
            duration: None,
            captured: Instant::now(),
            width: 2,
            height: 2,
            fps: gst::Fraction::new(0, 1),
            buffer: gst::Buffer::with_size(12).unwrap(),
            stride: 6,
        }
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
        let (join, joins) = crossbeam_channel::bounded(2);
        for (pipeline, name, input, output) in [
            (0, "busy", busy_rx, busy_out),
            (1, "quiet", quiet_rx, quiet_out),
        ] {
            let lane = Lane {
                pipeline,
                name: name.into(),
                input,
                output,
            };
            let annotation = Annotation {
                overlay: Default::default(),
                raw_depth: false,
            };
            join.send(Join { lane, annotation }).unwrap();
        }
        drop(join);
        run(
            "test",
            joins,
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
}
