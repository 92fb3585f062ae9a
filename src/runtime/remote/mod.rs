//! Models served by an inference server that speaks the Open Inference Protocol (KServe v2)
//! over gRPC: NVIDIA Triton, MLServer, KServe, Seldon. Another implementation of the same
//! batch-inference contract as a local model: frames are staged and put through the image
//! processor here (on the model's `device`), each batch goes to the server as one
//! `ModelInfer` request with `raw_input_contents`, and the output comes back into the same
//! post-processing. Up to `max_in_flight` requests are outstanding at once.
//!
//! - [`processor`]: the model's config.json and preprocessor_config.json (no weights);
//! - [`signature`]: the tensors sent and expected, checked against `ModelMetadata`;
//! - [`client`]: the gRPC channel (TLS, bearer token) and the readiness checks;
//! - [`link`]: the connection at work, on a small tokio runtime of its own;
//! - [`inference`]: the [`crate::runtime::BatchInference`] the worker drives;
//! - [`stats`]: what `/metrics` shows of it;
//! - [`probe`]: `visiond check --probe`;
//! - `proto`: the messages and client generated from `proto/grpc_predict_v2.proto`.

pub mod client;
pub mod inference;
pub mod link;
pub mod processor;
mod proto;
pub mod signature;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use self::inference::RemoteInference;
use self::link::Link;
use self::signature::Signature;
pub use self::stats::RemoteStats;
use super::batch::BatchFrames;
use super::stage::{FramePlan, TorchStager};
use crate::config::{ModelConfig, RemoteConfig};
use crate::models::ModelError;
use crate::models::checkpoint::hub::Fetch;
use crate::runtime::{FrameFormats, LoadError, ModelRuntime};

/// A served model ready for a worker: its processor read, the server checked (a server that
/// is away is waited for; one that serves another model is an error).
pub fn load(
    name: &str,
    model: &ModelConfig,
    remote: &RemoteConfig,
    formats: FrameFormats,
) -> Result<ModelRuntime, LoadError> {
    let processor = processor::open(model, Fetch::Download)?;
    let signature = Signature::new(remote, &processor, model.batch.max_size);
    let stats = Arc::new(RemoteStats::default());
    let link = Link::start(name, remote, signature.clone(), stats.clone()).map_err(|reason| {
        LoadError::Model(ModelError::Checkpoint {
            path: format!("models.{name}.remote").into(),
            reason,
        })
    })?;
    let info = processor.info;
    let stager = TorchStager::new(
        info.device,
        signature.input_kind(),
        Arc::new(processor.preprocessor),
        FramePlan::new(formats, info.device),
    );
    tracing::info!(
        model = name,
        url = %remote.url,
        served = %remote.served_name(),
        sends = %signature.input_description(),
        expects = %signature.output_description(),
        device = ?info.device,
        max_in_flight = remote.max_in_flight,
        "served model loaded"
    );
    let task = info.task;
    let cuda_device = match info.device {
        tch::Device::Cuda(index) => Some(index),
        _ => None,
    };
    let stager = Arc::new(stager);
    let frames = BatchFrames::new(info, stager.clone());
    let inference = RemoteInference::new(name, frames, link, stats, remote.max_in_flight);
    Ok(ModelRuntime {
        inference: Box::new(inference),
        stager,
        task,
        cuda_device,
    })
}

/// `visiond check --probe` for one served model: its processor (from the cache only), then
/// the server's answers to ServerReady, ModelMetadata (against what visiond will send and
/// expect) and ModelReady. Every problem is a sentence naming the server and the model.
pub fn probe(model: &ModelConfig, remote: &RemoteConfig) -> Result<String, String> {
    let processor = processor::open(model, Fetch::CacheOnly).map_err(|e| e.to_string())?;
    let signature = Signature::new(remote, &processor, model.batch.max_size);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a gRPC client: {e}"))?;
    let mut client = {
        let _entered = runtime.enter();
        client::connect(remote)?
    };
    let timeout = Duration::from_millis(remote.timeout_ms.max(2000));
    runtime
        .block_on(client::check(&mut client, remote, &signature, timeout))
        .map_err(|not_ready| not_ready.reason().to_owned())?;
    Ok(format!(
        "{} at {}: ready; sends {}, gets {}",
        remote.served_name(),
        remote.url,
        signature.input_description(),
        signature.output_description()
    ))
}
