//! [`BatchInference`] on a served model: frames staged and processed here as for a local
//! model, each batch sent as one `ModelInfer` request, and the answer put through the same
//! post-processing on this side.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tch::{Kind, Tensor};

use super::link::{Completion, Health, Link, Output, Request};
use super::stats::RemoteStats;
use crate::frames::{Frame, Processed};
use crate::runtime::batch::{BatchFrames, Staged, fail_group};
use crate::runtime::{
    Admission, Annotation, BatchInference, FrameFailure, InferenceError, Pipelined, RemoteFailure,
};

/// A served model, seen from its worker.
pub struct RemoteInference {
    /// The model's name in the daemon file.
    name: String,
    frames: BatchFrames,
    link: Link,
    stats: Arc<RemoteStats>,
    max_in_flight: usize,
    next_id: u64,
    /// Requests sent, oldest first: answers are handed on in this order.
    outstanding: VecDeque<Sent>,
    /// Answers that came before an older request's.
    arrived: HashMap<u64, Completion>,
    /// Frames that failed before they could be sent, handed on at the next collect.
    failed: Vec<Result<Processed, FrameFailure>>,
}

struct Sent {
    id: u64,
    group: Vec<Staged>,
}

impl RemoteInference {
    pub(super) fn new(
        name: &str,
        frames: BatchFrames,
        link: Link,
        stats: Arc<RemoteStats>,
        max_in_flight: usize,
    ) -> Self {
        Self {
            name: name.to_owned(),
            frames,
            link,
            stats,
            max_in_flight,
            next_id: 0,
            outstanding: VecDeque::new(),
            arrived: HashMap::new(),
            failed: Vec::new(),
        }
    }

    pub fn stats(&self) -> Arc<RemoteStats> {
        self.stats.clone()
    }

    fn error(&self, failure: RemoteFailure, message: String) -> InferenceError {
        InferenceError::Remote {
            model: self.name.clone(),
            failure,
            message,
        }
    }

    /// The group's processed frames as one host tensor's bytes, and its shape.
    fn request_body(&self, group: &[Staged]) -> Result<(Vec<i64>, Vec<u8>), InferenceError> {
        let inputs: Vec<&Tensor> = group.iter().map(|s| &s.pixels.pixel_values).collect();
        let batch = Tensor::f_cat(&inputs, 0)
            .and_then(|t| t.f_to_device(tch::Device::Cpu))
            .and_then(|t| t.f_contiguous())
            .map_err(|e| InferenceError::Preprocessing(e.into()))?;
        let shape = batch.size();
        let elements = batch.numel();
        let mut bytes = vec![0u8; elements * batch.kind().elt_size_in_bytes()];
        batch
            .f_copy_data_u8(&mut bytes, elements)
            .map_err(|e| InferenceError::Preprocessing(e.into()))?;
        Ok((shape, bytes))
    }

    /// An answer's output as f32 on the model's device.
    fn output_tensor(&self, output: &Output, frames: usize) -> Result<Tensor, InferenceError> {
        let kind = match output.datatype.as_str() {
            "FP16" => Kind::Half,
            "BF16" => Kind::BFloat16,
            "FP64" => Kind::Double,
            _ => Kind::Float,
        };
        if output.shape.first() != Some(&(frames as i64)) {
            return Err(self.error(
                RemoteFailure::Error,
                format!(
                    "the answer's output has shape {:?} for a batch of {frames} frame(s)",
                    output.shape
                ),
            ));
        }
        Tensor::f_from_data_size(&output.bytes, &output.shape, kind)
            .and_then(|t| t.f_to_kind(Kind::Float))
            .and_then(|t| t.f_to_device(self.frames.info().device))
            .map_err(|e| self.error(RemoteFailure::Error, format!("unreadable output: {e}")))
    }
}

impl BatchInference for RemoteInference {
    fn attach(&mut self, pipeline: usize, annotation: &Annotation) {
        self.frames.attach(pipeline, annotation);
    }

    /// Sends and waits: what a caller that does not pipeline gets (the worker pipelines).
    fn process(&mut self, frames: Vec<Frame>) -> Vec<Result<Processed, FrameFailure>> {
        self.submit(frames);
        let mut results = Vec::new();
        while !self.outstanding.is_empty() || !self.failed.is_empty() {
            results.extend(self.collect());
            if !self.outstanding.is_empty() {
                let _ = self.link.wakeups().recv();
            }
        }
        results
    }

    fn pipelined(&mut self) -> Option<&mut dyn Pipelined> {
        Some(self)
    }

    fn remote_stats(&self) -> Option<Arc<RemoteStats>> {
        Some(self.stats.clone())
    }
}

impl Pipelined for RemoteInference {
    fn admission(&self) -> Admission {
        match self.link.health() {
            Health::Waiting(reason) => Admission::Waiting(reason),
            Health::Ready if self.outstanding.len() >= self.max_in_flight => Admission::Full,
            Health::Ready => Admission::Open,
        }
    }

    fn submit(&mut self, frames: Vec<Frame>) {
        let grouped = self.frames.group(frames);
        self.failed
            .extend(grouped.failed.into_iter().map(|(_, failure)| Err(failure)));
        for group in grouped.groups {
            let body = self.request_body(&group);
            let (shape, bytes) = match body {
                Ok(body) => body,
                Err(error) => {
                    self.failed
                        .extend(fail_group(group, error).into_iter().map(|(_, r)| r));
                    continue;
                }
            };
            let id = self.next_id;
            self.next_id += 1;
            match self.link.send(Request { id, shape, bytes }) {
                Ok(()) => self.outstanding.push_back(Sent { id, group }),
                Err(_) => {
                    self.stats.failed(RemoteFailure::Error);
                    let error = self.error(
                        RemoteFailure::Error,
                        "the request queue is full or closed".to_owned(),
                    );
                    self.failed
                        .extend(fail_group(group, error).into_iter().map(|(_, r)| r));
                }
            }
        }
    }

    fn wakeups(&self) -> crossbeam_channel::Receiver<()> {
        self.link.wakeups()
    }

    fn collect(&mut self) -> Vec<Result<Processed, FrameFailure>> {
        let mut results = std::mem::take(&mut self.failed);
        let came: Vec<Completion> = self.link.completed().collect();
        for completion in came {
            self.arrived.insert(completion.id, completion);
        }
        while let Some(front) = self.outstanding.front() {
            let Some(completion) = self.arrived.remove(&front.id) else {
                break;
            };
            let Some(sent) = self.outstanding.pop_front() else {
                break;
            };
            let output = match completion.outcome {
                Ok(output) => self.output_tensor(&output, sent.group.len()),
                Err((failure, message)) => Err(self.error(failure, message)),
            };
            results.extend(
                self.frames
                    .finish(sent.group, output)
                    .into_iter()
                    .map(|(_, result)| result),
            );
        }
        results
    }
}
