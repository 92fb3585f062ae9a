//! One inference worker per (model, device), shared by every pipeline that names the model:
//! gathers a batch fairly across the pipelines' queues, runs it, and routes each result to
//! its pipeline's output hop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};

use super::channel::HopSender;
use super::frame::{Frame, Processed};

/// What a worker runs on a batch; implemented for libtorch models in `inference.rs`.
pub trait BatchInference: Send {
    /// Processes frames (possibly from several pipelines) and returns one result per frame,
    /// in order. A failure of one frame must not lose the others.
    fn process(&mut self, frames: Vec<Frame>) -> Vec<Result<Processed, (Frame, String)>>;
}

/// Counters of one worker, for metrics and tests.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub batches: AtomicU64,
    pub frames: AtomicU64,
    /// Batches that held more than one frame: batching is doing its job.
    pub multi_frame_batches: AtomicU64,
    pub largest_batch: AtomicU64,
    pub failed_frames: AtomicU64,
}

/// One pipeline as the worker sees it.
pub struct Lane {
    pub pipeline: usize,
    pub name: String,
    pub input: Receiver<Frame>,
    pub output: HopSender<Processed>,
}

pub struct BatchPolicy {
    pub max_size: usize,
    pub max_wait: Duration,
}

/// Runs until every lane's input is closed and drained; each lane's output hop is dropped
/// as soon as its input is done, so that pipeline's output stage can finish.
pub fn run(
    model: &str,
    mut lanes: Vec<Lane>,
    policy: BatchPolicy,
    mut inference: Box<dyn BatchInference>,
    stats: Arc<WorkerStats>,
) {
    let max_size = policy.max_size.max(1);
    // Where the next round-robin pass starts, so no lane is always served first.
    let mut next_lane = 0;
    while !lanes.is_empty() {
        let Some(first) = wait_for_frame(&mut lanes) else {
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
        let size = batch.len() as u64;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.frames.fetch_add(size, Ordering::Relaxed);
        stats.largest_batch.fetch_max(size, Ordering::Relaxed);
        if size > 1 {
            stats.multi_frame_batches.fetch_add(1, Ordering::Relaxed);
        }
        for result in inference.process(batch) {
            let processed = match result {
                Ok(processed) => processed,
                Err((frame, error)) => {
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
}

/// Blocks until some lane has a frame; removes lanes whose input closed and is empty.
fn wait_for_frame(lanes: &mut Vec<Lane>) -> Option<Frame> {
    let mut select = Select::new();
    for lane in lanes.iter() {
        select.recv(&lane.input);
    }
    let operation = select.select();
    let index = operation.index();
    match operation.recv(&lanes[index].input) {
        Ok(frame) => Some(frame),
        Err(_) => {
            let lane = lanes.remove(index);
            tracing::debug!(pipeline = %lane.name, "input closed; worker lane done");
            None
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
