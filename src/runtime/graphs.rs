//! How a model's forward runs: eagerly, or padded to a few fixed batch sizes and replayed from
//! CUDA graphs.
//!
//! On a GPU most of a small batch's time goes to launching kernels one by one from the host. A
//! CUDA graph records the whole forward once and launches it as one unit. A graph replays the
//! exact shapes and addresses it was captured with, so each (batch size, input size) gets its
//! own capture with a static input buffer (the batch is copied in) and a static output (copied
//! out), and batches are padded up to the next captured size (1, 2, 4, 8, 16, 32 by default;
//! larger batches run in chunks of the largest). Padding rows are whatever the buffer last held:
//! every supported architecture treats batch rows independently, so they never touch the real
//! rows' results.
//!
//! The padding path runs on the CPU too (without graphs), which is how the tests check that a
//! padded batch gives the unpadded batch's outputs. Capture needs a forward without host
//! synchronisation; a model that cannot be captured falls back to eager with one log line.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use super::native::{CudaGraph, GraphContext, NativeError};
use crate::models::checkpoint::ModelInfo;
use crate::models::device::torch_kind;
use crate::models::{ModelError, VisionModel};

/// The batch sizes graphs are captured for unless told otherwise.
pub const DEFAULT_GRAPH_BATCHES: [i64; 6] = [1, 2, 4, 8, 16, 32];

/// Captured (batch, input size) combinations per model beyond which new shapes run eagerly:
/// each capture keeps its activations' memory.
const MAX_CAPTURES: usize = 24;

/// Eager forwards on the side stream before a capture: they set up cuBLAS/cuDNN workspaces
/// and fill lazily computed caches (position grids, attention biases) outside the graph.
const WARMUP_FORWARDS: usize = 2;

/// How forwards run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Execution {
    /// Each forward as libtorch ops at the batch size given.
    Eager,
    /// Batches padded up to one of `sizes` (ascending) in static buffers; with `graphs`, each
    /// (size, input size) is captured once as a CUDA graph and replayed.
    Padded { sizes: Vec<i64>, graphs: bool },
}

impl Execution {
    /// What a model on `device` gets: CUDA graphs at the default sizes where asked for and
    /// possible (with one log line saying why not otherwise), eager everywhere else.
    pub fn for_device(model: &str, device: Device, cuda_graphs: bool) -> Self {
        let Device::Cuda(index) = device else {
            return Self::Eager;
        };
        if !cuda_graphs {
            return Self::Eager;
        }
        match super::native::cuda_graphs_available(index) {
            Ok(()) => Self::Padded {
                sizes: DEFAULT_GRAPH_BATCHES.to_vec(),
                graphs: true,
            },
            Err(why) => {
                tracing::info!(model, reason = %why, "CUDA graphs unavailable; running eagerly");
                Self::Eager
            }
        }
    }

    pub fn uses_graphs(&self) -> bool {
        matches!(self, Self::Padded { graphs: true, .. })
    }
}

/// The static buffers (and graph) of one (padded batch, input shape).
struct Capture {
    input: Tensor,
    /// The graph's output, rewritten by each replay (graphs only).
    output: Option<Tensor>,
    graph: Option<CudaGraph>,
}

/// A model with its way of running forwards. Not shared: one thread runs it at a time.
pub struct ModelRunner {
    model: Box<dyn VisionModel>,
    name: String,
    device: Device,
    kind: Kind,
    execution: Execution,
    context: Option<GraphContext>,
    captures: HashMap<[i64; 4], Capture>,
    /// Set once the capture limit was met and reported.
    full_reported: bool,
}

impl ModelRunner {
    /// `name` is for log lines; `device` and `kind` are where and in what the model runs.
    pub fn new(
        model: Box<dyn VisionModel>,
        name: &str,
        device: Device,
        kind: Kind,
        execution: Execution,
    ) -> Self {
        let mut runner = Self {
            model,
            name: name.to_owned(),
            device,
            kind,
            execution: Execution::Eager,
            context: None,
            captures: HashMap::new(),
            full_reported: false,
        };
        runner.execution = match execution {
            Execution::Padded { sizes, graphs } => {
                let mut sizes: Vec<i64> = sizes.into_iter().filter(|&s| s > 0).collect();
                sizes.sort_unstable();
                sizes.dedup();
                if sizes.is_empty() {
                    Execution::Eager
                } else if graphs {
                    runner.graph_context(sizes)
                } else {
                    Execution::Padded { sizes, graphs }
                }
            }
            Execution::Eager => Execution::Eager,
        };
        runner
    }

    /// A runner for a loaded model, on the device and in the dtype it was loaded with.
    pub fn for_model(model: Box<dyn VisionModel>, info: &ModelInfo, execution: Execution) -> Self {
        Self::new(
            model,
            &info.name,
            info.device,
            torch_kind(info.dtype),
            execution,
        )
    }

    fn graph_context(&mut self, sizes: Vec<i64>) -> Execution {
        let Device::Cuda(index) = self.device else {
            tracing::info!(model = %self.name, "CUDA graphs need a CUDA device; running eagerly");
            return Execution::Eager;
        };
        match GraphContext::new(index) {
            Ok(context) => {
                self.context = Some(context);
                Execution::Padded {
                    sizes,
                    graphs: true,
                }
            }
            Err(why) => {
                tracing::info!(model = %self.name, reason = %why, "CUDA graphs unavailable; running eagerly");
                Execution::Eager
            }
        }
    }

    pub fn model(&self) -> &dyn VisionModel {
        self.model.as_ref()
    }

    pub fn execution(&self) -> &Execution {
        &self.execution
    }

    /// `pixel_values` [B, 3, H, W] through the model, as [`VisionModel::forward`] would give it.
    pub fn forward(&mut self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        tch::no_grad(|| {
            let sizes = match &self.execution {
                Execution::Padded { sizes, .. } if pixel_values.dim() == 4 => sizes.clone(),
                // Eager, or an input the model itself must refuse with its own message.
                _ => return self.model.forward(pixel_values),
            };
            let batch = pixel_values.size()[0];
            let largest = *sizes.last().unwrap_or(&1);
            if batch <= largest {
                return self.padded(pixel_values, batch, &sizes);
            }
            let mut outputs = Vec::new();
            let mut start = 0;
            while start < batch {
                let count = largest.min(batch - start);
                let chunk = pixel_values.f_narrow(0, start, count)?;
                outputs.push(self.padded(&chunk, count, &sizes)?);
                start += count;
            }
            Ok(Tensor::f_cat(&outputs, 0)?)
        })
    }

    fn padded(&mut self, x: &Tensor, batch: i64, sizes: &[i64]) -> Result<Tensor, ModelError> {
        let Some(&padded) = sizes.iter().find(|&&s| s >= batch) else {
            return self.model.forward(x);
        };
        let shape = x.size();
        let key = [padded, shape[1], shape[2], shape[3]];
        if !self.captures.contains_key(&key) {
            if self.captures.len() >= MAX_CAPTURES {
                if !self.full_reported {
                    self.full_reported = true;
                    tracing::warn!(model = %self.name, limit = MAX_CAPTURES, "too many input shapes to keep a capture for each; new shapes run eagerly");
                }
                return self.model.forward(x);
            }
            let capture = match self.capture(key, x) {
                Ok(capture) => capture,
                Err(CaptureFailed::Model(error)) => return Err(error),
                Err(CaptureFailed::Graph(reason)) => {
                    tracing::warn!(model = %self.name, batch = padded, height = key[2], width = key[3], %reason, "CUDA graph capture failed; running this model eagerly");
                    self.execution = Execution::Eager;
                    self.captures.clear();
                    self.context = None;
                    return self.model.forward(x);
                }
            };
            self.captures.insert(key, capture);
        }
        let Some(capture) = self.captures.get_mut(&key) else {
            return self.model.forward(x);
        };
        capture.input.f_narrow(0, 0, batch)?.f_copy_(x)?;
        let output = match (&mut capture.graph, &capture.output) {
            (Some(graph), Some(output)) => {
                graph.replay().map_err(|e| {
                    ModelError::Device(format!("{}: CUDA graph replay failed: {e}", self.name))
                })?;
                // A copy: the next replay rewrites the static output.
                let rows = output.f_narrow(0, 0, batch)?;
                let mut copy = rows.f_empty_like()?;
                copy.f_copy_(&rows)?;
                return Ok(copy);
            }
            _ => self.model.forward(&capture.input)?,
        };
        Ok(output.f_narrow(0, 0, batch)?)
    }

    /// Static buffers for `key`, and with graphs the captured forward on them. `x` first runs
    /// eagerly: an input the model refuses gets the model's own error, naming its own shape.
    fn capture(&mut self, key: [i64; 4], x: &Tensor) -> Result<Capture, CaptureFailed> {
        drop(self.model.forward(x).map_err(CaptureFailed::Model)?);
        let input = Tensor::f_zeros(key, (self.kind, self.device))
            .map_err(|e| CaptureFailed::Model(e.into()))?;
        let Some(context) = self.context.as_mut() else {
            return Ok(Capture {
                input,
                output: None,
                graph: None,
            });
        };
        let model = self.model.as_ref();
        let (graph, output) = context
            .on_side_stream(|context| {
                for _ in 0..WARMUP_FORWARDS {
                    drop(model.forward(&input).map_err(CaptureFailed::Model)?);
                }
                context
                    .capture(|| model.forward(&input))
                    .map_err(CaptureFailed::Graph)
            })
            .map_err(CaptureFailed::Graph)??;
        tracing::debug!(model = %self.name, batch = key[0], height = key[2], width = key[3], "CUDA graph captured");
        Ok(Capture {
            input,
            output: Some(output),
            graph: Some(graph),
        })
    }
}

enum CaptureFailed {
    /// The model refused the input (its own error, as eager would give it).
    Model(ModelError),
    /// Capturing failed: the model runs eagerly from then on.
    Graph(NativeError),
}
