//! The running connection to a served model's server, on a small tokio runtime of its own:
//! requests come from the model's worker thread through a bounded queue that never blocks it,
//! answers go back through a bounded channel plus a wakeup, and a health task finds out when a
//! server that went away can take requests again.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{Notify, mpsc};

use super::client::{self, Client, NotReady};
use super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::proto::{ModelInferRequest, ModelInferResponse};
use super::signature::Signature;
use super::stats::RemoteStats;
use crate::config::RemoteConfig;
use crate::runtime::RemoteFailure;

/// The first and the longest wait between readiness checks while the server is away.
const RETRY_INITIAL: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(4);

/// Whether the server takes requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    /// Why not: the health task checks again and again until it does.
    Waiting(String),
}

/// One batch on its way.
pub struct Request {
    pub id: u64,
    pub shape: Vec<i64>,
    pub bytes: Vec<u8>,
}

/// A request's answer, or why there is none.
pub struct Completion {
    pub id: u64,
    pub outcome: Result<Output, (RemoteFailure, String)>,
}

/// The output tensor as the server sent it.
pub struct Output {
    pub datatype: String,
    pub shape: Vec<i64>,
    pub bytes: Vec<u8>,
}

/// What the tasks and the worker share.
struct Shared {
    remote: RemoteConfig,
    signature: Signature,
    health: Mutex<Health>,
    stats: Arc<RemoteStats>,
    completions: Sender<Completion>,
    wake: Sender<()>,
    /// A request found the server gone: the health task checks it until it is back.
    suspect: Notify,
}

impl Shared {
    fn wake(&self) {
        // One pending wakeup is enough: the worker collects everything when it wakes.
        let _ = self.wake.try_send(());
    }

    fn set_health(&self, health: Health) {
        self.stats
            .up
            .store(health == Health::Ready, Ordering::Relaxed);
        if let Ok(mut current) = self.health.lock() {
            *current = health;
        }
        self.wake();
    }
}

/// The connection, owned by the model's worker.
pub struct Link {
    /// Dropped with the link: its tasks and open calls end.
    _runtime: tokio::runtime::Runtime,
    requests: mpsc::Sender<Request>,
    completions: Receiver<Completion>,
    wakeups: Receiver<()>,
    shared: Arc<Shared>,
}

impl Link {
    /// Connects and checks the server (ServerReady, ModelMetadata against `signature`,
    /// ModelReady). A server that is away is not an error: the link starts waiting for it. A
    /// server that answers with another model is one, as is a TLS or token file that cannot
    /// be read.
    pub fn start(
        name: &str,
        remote: &RemoteConfig,
        signature: Signature,
        stats: Arc<RemoteStats>,
    ) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("remote-{name}"))
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the gRPC client's runtime: {e}"))?;
        let mut client = {
            let _entered = runtime.enter();
            client::connect(remote)?
        };
        let timeout = check_timeout(remote);
        let first = runtime.block_on(client::check(&mut client, remote, &signature, timeout));
        let health = match first {
            Ok(()) => {
                tracing::info!(model = name, url = %remote.url, served = %remote.served_name(), "served model ready");
                Health::Ready
            }
            Err(NotReady::Mismatch(reason)) => return Err(reason),
            Err(NotReady::Unavailable(reason)) => {
                tracing::warn!(model = name, %reason, "served model not available yet; its pipelines wait for it");
                Health::Waiting(reason)
            }
        };
        // Requests beyond max_in_flight only come from a batch of frames of several sizes
        // (one request per size): room for those too, and a refusal past it is counted.
        let (requests, incoming) = mpsc::channel(remote.max_in_flight * 2 + 8);
        let (completions_tx, completions) =
            crossbeam_channel::bounded(remote.max_in_flight * 2 + 8);
        let (wake, wakeups) = crossbeam_channel::bounded(1);
        let shared = Arc::new(Shared {
            remote: remote.clone(),
            signature,
            health: Mutex::new(Health::Ready),
            stats,
            completions: completions_tx,
            wake,
            suspect: Notify::new(),
        });
        shared.set_health(health);
        runtime.spawn(dispatch(shared.clone(), client.clone(), incoming));
        runtime.spawn(watch(shared.clone(), client, name.to_owned()));
        Ok(Self {
            _runtime: runtime,
            requests,
            completions,
            wakeups,
            shared,
        })
    }

    pub fn health(&self) -> Health {
        self.shared
            .health
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| Health::Waiting("the client's state is unreadable".to_owned()))
    }

    /// Queues a request without waiting; gives it back when the queue is full or closed.
    pub fn send(&self, request: Request) -> Result<(), Request> {
        self.requests.try_send(request).map_err(|e| match e {
            mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
        })
    }

    /// Answers that came back since the last call.
    pub fn completed(&self) -> impl Iterator<Item = Completion> + '_ {
        self.completions.try_iter()
    }

    pub fn wakeups(&self) -> Receiver<()> {
        self.wakeups.clone()
    }
}

/// Readiness calls wait no longer than a request may take, and at least a second (a TLS
/// handshake to a busy server).
fn check_timeout(remote: &RemoteConfig) -> Duration {
    Duration::from_millis(remote.timeout_ms.max(1000))
}

/// Starts each request as it comes, so that up to `max_in_flight` run at once.
async fn dispatch(shared: Arc<Shared>, client: Client, mut incoming: mpsc::Receiver<Request>) {
    while let Some(request) = incoming.recv().await {
        tokio::spawn(infer(shared.clone(), client.clone(), request));
    }
}

/// While the server is away, checks it with a growing pause until it takes requests again;
/// then sleeps until a request finds it gone.
async fn watch(shared: Arc<Shared>, mut client: Client, name: String) {
    let timeout = check_timeout(&shared.remote);
    loop {
        let waiting = matches!(
            shared.health.lock().map(|h| h.clone()),
            Ok(Health::Waiting(_))
        );
        if !waiting {
            shared.suspect.notified().await;
            continue;
        }
        let mut pause = RETRY_INITIAL;
        loop {
            tokio::time::sleep(pause).await;
            match client::check(&mut client, &shared.remote, &shared.signature, timeout).await {
                Ok(()) => {
                    tracing::info!(model = %name, url = %shared.remote.url, "served model ready again");
                    shared.set_health(Health::Ready);
                    break;
                }
                Err(not_ready) => {
                    if let NotReady::Mismatch(reason) = &not_ready {
                        tracing::error!(model = %name, %reason, "the server came back with another model; still waiting");
                    }
                    let reason = not_ready.reason().to_owned();
                    let changed = shared
                        .health
                        .lock()
                        .is_ok_and(|h| *h != Health::Waiting(reason.clone()));
                    if changed {
                        shared.set_health(Health::Waiting(reason));
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

/// One request, start to answer; the answer (or failure) goes back to the worker.
async fn infer(shared: Arc<Shared>, mut client: Client, request: Request) {
    let remote = &shared.remote;
    let signature = &shared.signature;
    let timeout = Duration::from_millis(remote.timeout_ms);
    let message = ModelInferRequest {
        model_name: remote.model.clone(),
        model_version: remote.version.clone(),
        id: request.id.to_string(),
        inputs: vec![InferInputTensor {
            name: signature.input_name.clone(),
            datatype: signature.input_datatype.to_owned(),
            shape: request.shape,
            ..Default::default()
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: signature.output_name.clone(),
            ..Default::default()
        }],
        raw_input_contents: vec![request.bytes],
        ..Default::default()
    };
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let answer = tokio::time::timeout(
        timeout,
        client.model_infer(client::bounded(message, timeout)),
    )
    .await;
    shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    shared.stats.answered(started.elapsed());
    let outcome = match answer {
        Err(_) => Err((
            RemoteFailure::Timeout,
            format!("no answer within {} ms", remote.timeout_ms),
        )),
        Ok(Err(status)) => Err((client::classify(&status), client::describe(&status))),
        Ok(Ok(response)) => output(response.into_inner(), &signature.output_name)
            .map_err(|reason| (RemoteFailure::Error, reason)),
    };
    if let Err((failure, reason)) = &outcome {
        shared.stats.failed(*failure);
        tracing::warn!(url = %remote.url, served = %remote.served_name(), request = request.id, %failure, %reason, "request failed; its frames are dropped");
        if *failure == RemoteFailure::Unavailable {
            shared.set_health(Health::Waiting(format!("lost {}: {reason}", remote.url)));
            shared.suspect.notify_one();
        }
    }
    if shared
        .completions
        .try_send(Completion {
            id: request.id,
            outcome,
        })
        .is_err()
    {
        // Cannot happen while requests stay within the queue's bound; the worker would wait
        // for the answer forever, so say so loudly.
        tracing::error!(request = request.id, "an answer found no room to go back");
    }
    shared.wake();
}

/// The requested output of a response, as raw little-endian bytes.
fn output(response: ModelInferResponse, name: &str) -> Result<Output, String> {
    let names: Vec<&str> = response.outputs.iter().map(|o| o.name.as_str()).collect();
    let index = response
        .outputs
        .iter()
        .position(|o| o.name == name)
        .ok_or_else(|| {
            format!(
                "the answer has no output '{name}' (it has: {})",
                names.join(", ")
            )
        })?;
    let tensor = &response.outputs[index];
    let size = match tensor.datatype.as_str() {
        "FP32" => 4,
        "FP16" | "BF16" => 2,
        "FP64" => 8,
        other => {
            return Err(format!(
                "output '{name}' is {other}; visiond reads FP32, FP16, BF16 or FP64"
            ));
        }
    };
    let bytes = match response.raw_output_contents.get(index) {
        Some(raw) => raw.clone(),
        None => match &tensor.contents {
            Some(contents) if tensor.datatype == "FP32" => contents
                .fp32_contents
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            Some(contents) if tensor.datatype == "FP64" => contents
                .fp64_contents
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            _ => return Err(format!("output '{name}' came without data")),
        },
    };
    let elements = tensor.shape.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
    });
    match elements {
        Some(n) if n.checked_mul(size) == Some(bytes.len()) => Ok(Output {
            datatype: tensor.datatype.clone(),
            shape: tensor.shape.clone(),
            bytes,
        }),
        _ => Err(format!(
            "output '{name}' has shape {:?} but {} bytes of {}",
            tensor.shape,
            bytes.len(),
            tensor.datatype
        )),
    }
}
