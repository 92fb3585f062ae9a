//! Checkpoint tensors, looked up by their Hugging Face names.
//!
//! Architectures ask for every parameter through [`WeightsPath::get`]. A missing name or a
//! wrong shape does not stop construction: it is recorded and a zero placeholder is returned,
//! so that [`Weights::finish`] can name *every* problem in one error instead of the first one.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::models::ModelError;

/// All tensors of one checkpoint, on the CPU in their stored dtype until asked for.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    device: Device,
    kind: Kind,
    origin: PathBuf,
    used: RefCell<BTreeSet<String>>,
    missing: RefCell<Vec<String>>,
    wrong_shape: RefCell<Vec<String>>,
}

impl Weights {
    /// Wraps already-read tensors (from one or several safetensors shards).
    pub fn new(
        tensors: HashMap<String, Tensor>,
        device: Device,
        kind: Kind,
        origin: impl Into<PathBuf>,
    ) -> Self {
        Self {
            tensors,
            device,
            kind,
            origin: origin.into(),
            used: RefCell::default(),
            missing: RefCell::default(),
            wrong_shape: RefCell::default(),
        }
    }

    /// Reads `model.safetensors` files (one, or all shards of an index) into memory.
    pub fn read_safetensors(
        files: &[PathBuf],
        device: Device,
        kind: Kind,
        origin: &Path,
    ) -> Result<Self, ModelError> {
        let mut tensors = HashMap::new();
        for file in files {
            let named = Tensor::read_safetensors(file).map_err(|e| ModelError::Checkpoint {
                path: file.clone(),
                reason: e.to_string(),
            })?;
            tensors.extend(named);
        }
        Ok(Self::new(tensors, device, kind, origin))
    }

    /// The root of the parameter namespace.
    pub fn root(&self) -> WeightsPath<'_> {
        WeightsPath {
            weights: self,
            prefix: String::new(),
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Where the tensors came from, for error messages.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Every stored name, for architecture detection and counting layers.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Ends loading: an error naming every missing or mis-shaped parameter, and a warning for
    /// stored tensors nobody asked for unless they match one of `known_unused` (a name prefix,
    /// or a suffix when it starts with `*`).
    pub fn finish(self, known_unused: &[&str]) -> Result<(), ModelError> {
        let missing = self.missing.take();
        let wrong_shape = self.wrong_shape.take();
        if !missing.is_empty() || !wrong_shape.is_empty() {
            return Err(ModelError::Parameters {
                path: self.origin.clone(),
                missing,
                wrong_shape,
            });
        }
        let used = self.used.take();
        let mut unexpected: Vec<&str> = self
            .tensors
            .keys()
            .filter(|name| !used.contains(*name))
            .filter(|name| !name.ends_with("num_batches_tracked"))
            .filter(|name| {
                !known_unused
                    .iter()
                    .any(|pattern| match pattern.strip_prefix('*') {
                        Some(suffix) => name.ends_with(suffix),
                        None => name.starts_with(pattern),
                    })
            })
            .map(String::as_str)
            .collect();
        unexpected.sort_unstable();
        if !unexpected.is_empty() {
            tracing::warn!(
                checkpoint = %self.origin.display(),
                count = unexpected.len(),
                names = %unexpected.join(", "),
                "checkpoint has parameters this architecture does not use"
            );
        }
        Ok(())
    }

    fn fetch(&self, name: String, shape: &[i64]) -> Tensor {
        let Some(stored) = self.tensors.get(&name) else {
            self.missing.borrow_mut().push(name);
            return self.placeholder(shape);
        };
        self.used.borrow_mut().insert(name.clone());
        if stored.size() != shape {
            self.wrong_shape.borrow_mut().push(format!(
                "{name}: checkpoint has {:?}, config implies {:?}",
                stored.size(),
                shape
            ));
            return self.placeholder(shape);
        }
        stored.to_device(self.device).to_kind(self.kind).detach()
    }

    fn placeholder(&self, shape: &[i64]) -> Tensor {
        Tensor::zeros(shape, (self.kind, self.device))
    }
}

/// A prefix inside a checkpoint (`dpt.encoder.layer.3`), the way `tch::nn::Path` works.
#[derive(Clone)]
pub struct WeightsPath<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> WeightsPath<'a> {
    /// A child namespace: `path.pp("layer").pp(3)`.
    pub fn pp(&self, name: impl Display) -> WeightsPath<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        WeightsPath {
            weights: self.weights,
            prefix,
        }
    }

    /// The full name of a parameter under this prefix.
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    /// A required parameter with the shape the config implies, on the model's device and dtype.
    pub fn get(&self, leaf: &str, shape: &[i64]) -> Tensor {
        self.weights.fetch(self.name(leaf), shape)
    }

    /// An optional parameter (e.g. a bias some checkpoints omit): `None` when absent.
    pub fn get_opt(&self, leaf: &str, shape: &[i64]) -> Option<Tensor> {
        let name = self.name(leaf);
        self.weights
            .contains(&name)
            .then(|| self.weights.fetch(name, shape))
    }

    pub fn contains(&self, leaf: &str) -> bool {
        self.weights.contains(&self.name(leaf))
    }

    pub fn weights(&self) -> &'a Weights {
        self.weights
    }

    pub fn device(&self) -> Device {
        self.weights.device
    }

    pub fn kind(&self) -> Kind {
        self.weights.kind
    }
}
