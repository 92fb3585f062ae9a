//! What visiond will send a served model and what it expects back, checked against the
//! server's `ModelMetadata`: names, datatypes and shapes, a mismatch naming both sides.

use tch::Kind;

use super::proto::ModelMetadataResponse;
use super::proto::model_metadata_response::TensorMetadata;
use crate::config::{DType, RemoteConfig, RemoteInput, Task};
use crate::models::checkpoint::output_name;

use super::processor::Processor;

/// The input name models exported from transformers take.
pub const DEFAULT_INPUT: &str = "pixel_values";

/// The tensors of one served model, as this side sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub input_name: String,
    /// `FP32`, `FP16`, `BF16` or `UINT8`.
    pub input_datatype: &'static str,
    /// The processed frame's (height, width) when every frame has the same one.
    pub input_size: Option<(i64, i64)>,
    pub output_name: String,
    pub task: Task,
    /// Class count for classification and segmentation, when config.json names the classes.
    pub classes: Option<usize>,
    /// Frames per request at most (the batch size).
    pub max_batch: usize,
}

impl Signature {
    pub fn new(remote: &RemoteConfig, processor: &Processor, max_batch: usize) -> Self {
        let task = processor.info.task;
        let input_datatype = match (remote.input, processor.info.dtype) {
            (RemoteInput::Uint8, _) => "UINT8",
            (RemoteInput::Float, DType::F32) => "FP32",
            (RemoteInput::Float, DType::F16) => "FP16",
            (RemoteInput::Float, DType::Bf16) => "BF16",
        };
        let labels = processor.info.id2label.len();
        Self {
            input_name: remote
                .input_name
                .clone()
                .unwrap_or_else(|| DEFAULT_INPUT.to_owned()),
            input_datatype,
            input_size: processor.preprocessor.fixed_output_size(),
            output_name: remote
                .output_name
                .clone()
                .unwrap_or_else(|| output_name(task).to_owned()),
            task,
            // DPT depth checkpoints carry placeholder labels: only classes of a classifier or
            // segmenter count.
            classes: (task != Task::Depth && labels > 0).then_some(labels),
            max_batch,
        }
    }

    /// The libtorch kind frames are staged in.
    pub fn input_kind(&self) -> Kind {
        match self.input_datatype {
            "UINT8" => Kind::Uint8,
            "FP16" => Kind::Half,
            "BF16" => Kind::BFloat16,
            _ => Kind::Float,
        }
    }

    /// What is sent, as people read shapes: `FP16 [B, 3, 384, 384]`.
    pub fn input_description(&self) -> String {
        let (h, w) = match self.input_size {
            Some((h, w)) => (h.to_string(), w.to_string()),
            None => ("H".to_owned(), "W".to_owned()),
        };
        format!(
            "'{}' {} [B<={}, 3, {h}, {w}]",
            self.input_name, self.input_datatype, self.max_batch
        )
    }

    /// What is expected back.
    pub fn output_description(&self) -> String {
        let classes = self
            .classes
            .map_or_else(|| "C".to_owned(), |c| c.to_string());
        let shape = match self.task {
            Task::Depth => "[B, H', W']".to_owned(),
            Task::Segmentation => format!("[B, {classes}, H', W']"),
            Task::Classification => format!("[B, {classes}]"),
        };
        format!("'{}' FP32/FP16 {shape} ({})", self.output_name, self.task)
    }

    /// Every mismatch between the served model's metadata and this signature, each naming
    /// what the server has and what visiond sends or expects.
    pub fn check(&self, metadata: &ModelMetadataResponse) -> Result<(), String> {
        let mut problems = Vec::new();
        match metadata.inputs.iter().find(|t| t.name == self.input_name) {
            None => problems.push(format!(
                "it has no input '{}' (its inputs: {}); visiond sends {} (set remote.input_name to the model's input)",
                self.input_name,
                describe_all(&metadata.inputs),
                self.input_description()
            )),
            Some(input) => self.check_input(input, &mut problems),
        }
        if metadata.inputs.len() > 1 {
            problems.push(format!(
                "it takes {} inputs ({}); visiond sends one, {}",
                metadata.inputs.len(),
                describe_all(&metadata.inputs),
                self.input_description()
            ));
        }
        match metadata.outputs.iter().find(|t| t.name == self.output_name) {
            None => problems.push(format!(
                "it has no output '{}' (its outputs: {}); visiond expects {} (set remote.output_name to the model's output)",
                self.output_name,
                describe_all(&metadata.outputs),
                self.output_description()
            )),
            Some(output) => self.check_output(output, &mut problems),
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    fn check_input(&self, input: &TensorMetadata, problems: &mut Vec<String>) {
        let theirs = describe(input);
        let ours = self.input_description();
        if input.datatype != self.input_datatype {
            problems.push(format!(
                "input datatype: the server's model takes {theirs}, visiond sends {ours} (dtype and remote.input decide it)"
            ));
        }
        let shape = &input.shape;
        let fits = |dim: i64, ours: i64| dim == -1 || dim == ours;
        let shape_ok = shape.len() == 4
            && (shape[0] == -1 || shape[0] >= self.max_batch as i64)
            && fits(shape[1], 3)
            && match self.input_size {
                Some((h, w)) => fits(shape[2], h) && fits(shape[3], w),
                // Frame-dependent sizes need a model that takes any.
                None => shape[2] == -1 && shape[3] == -1,
            };
        if !shape_ok {
            let why = if shape.len() == 4 && shape[0] != -1 && shape[0] < self.max_batch as i64 {
                " (its batch dimension is smaller than batch.max_size)"
            } else if self.input_size.is_none() {
                " (this processor's size follows each frame's, so the model must take any height and width: -1)"
            } else {
                ""
            };
            problems.push(format!(
                "input shape: the server's model takes {theirs}, visiond sends {ours}{why}"
            ));
        }
    }

    fn check_output(&self, output: &TensorMetadata, problems: &mut Vec<String>) {
        let theirs = describe(output);
        let ours = self.output_description();
        if !matches!(output.datatype.as_str(), "FP32" | "FP16" | "BF16" | "FP64") {
            problems.push(format!(
                "output datatype: the server's model gives {theirs}, visiond expects {ours}"
            ));
        }
        let rank = match self.task {
            Task::Depth => 3,
            Task::Segmentation => 4,
            Task::Classification => 2,
        };
        let shape = &output.shape;
        let classes_ok = match (self.task, self.classes) {
            (Task::Depth, _) | (_, None) => true,
            (_, Some(classes)) => shape
                .get(1)
                .is_some_and(|&c| c == -1 || c == classes as i64),
        };
        if shape.len() != rank || !classes_ok {
            problems.push(format!(
                "output shape: the server's model gives {theirs}, visiond expects {ours}"
            ));
        }
    }
}

fn describe(tensor: &TensorMetadata) -> String {
    let dims: Vec<String> = tensor.shape.iter().map(i64::to_string).collect();
    format!(
        "'{}' {} [{}]",
        tensor.name,
        tensor.datatype,
        dims.join(", ")
    )
}

fn describe_all(tensors: &[TensorMetadata]) -> String {
    if tensors.is_empty() {
        return "none".to_owned();
    }
    tensors.iter().map(describe).collect::<Vec<_>>().join(", ")
}
