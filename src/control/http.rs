//! The control plane's HTTP server (axum on tokio), bound to `http.listen`.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 when every pipeline is `playing` or `finished`, else 503; JSON either way |
//! | `GET /api/pipelines` | JSON array, one object per pipeline ([`PipelineStatus`]) |
//! | `GET /metrics` | Prometheus text format 0.0.4 ([`super::metrics`]) |
//!
//! Other paths are 404 and other methods 405. Handlers only read the shared
//! [`EngineView`]; they never block on the frame path.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::pipeline::stats::PipelineState;
use crate::pipeline::view::{EngineView, PipelineHandle};

/// The control plane's listening socket, bound before it serves (so a taken port is an error
/// at start, and port 0 tells its real port before any request).
pub struct ControlServer {
    listener: TcpListener,
    address: SocketAddr,
}

impl ControlServer {
    /// Binds `address` (port 0 picks a free port).
    pub async fn bind(address: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        Ok(Self { listener, address })
    }

    /// The bound address, with the real port when 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves `view` until `shutdown` completes, then stops accepting, lets requests in
    /// flight finish and closes idle connections. Tests pass their own `shutdown`.
    pub async fn serve(
        self,
        view: Arc<EngineView>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(address = %self.address, "control plane listening");
        axum::serve(self.listener, router(view))
            .with_graceful_shutdown(shutdown)
            .await?;
        tracing::info!(address = %self.address, "control plane stopped");
        Ok(())
    }
}

/// The routes, on `view`.
pub fn router(view: Arc<EngineView>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/pipelines", get(pipelines))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(view)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found")
}

/// The `/readyz` body.
#[derive(Debug, Serialize)]
pub struct Readiness<'a> {
    pub ready: bool,
    /// The pipelines neither `playing` nor `finished`, with their state.
    pub not_ready: Vec<NamedState<'a>>,
}

#[derive(Debug, Serialize)]
pub struct NamedState<'a> {
    pub name: &'a str,
    #[serde(flatten)]
    pub state: PipelineState,
}

async fn readyz(State(view): State<Arc<EngineView>>) -> Response {
    let not_ready: Vec<NamedState<'_>> = view
        .pipelines()
        .iter()
        .map(|p| NamedState {
            name: &p.name,
            state: p.stats.state(),
        })
        .filter(|p| !matches!(p.state, PipelineState::Playing | PipelineState::Finished))
        .collect();
    let ready = not_ready.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(Readiness { ready, not_ready })).into_response()
}

/// One pipeline in `/api/pipelines`.
#[derive(Debug, Serialize)]
pub struct PipelineStatus<'a> {
    pub name: &'a str,
    pub model: String,
    /// `state`, plus `attempt` and `last_error` when reconnecting, `error` when failed.
    #[serde(flatten)]
    pub state: PipelineState,
    pub frames_in: u64,
    pub frames_out: u64,
    pub dropped: HopCounts,
    pub queue: Queue,
    pub latency_ms: Latency,
    /// Reconnect attempts (each try counts).
    pub reconnects: u64,
    /// Times the source was lost (one outage, however many attempts it took).
    pub outages: u64,
    /// Each output's health: `video`, and each recording (`file <path>`), with `state`
    /// (`up`/`down`), `failures`, and `reason`, `error`, `retry_in_ms` while down.
    pub outputs: Vec<crate::pipeline::stats::OutputHealth>,
    pub uptime_s: f64,
}

/// Frames dropped at each hop.
#[derive(Debug, Serialize)]
pub struct HopCounts {
    pub input: u64,
    pub output: u64,
}

/// The first hop's depth now and its capacity.
#[derive(Debug, Serialize)]
pub struct Queue {
    pub depth: usize,
    pub capacity: usize,
}

/// Source → output latency percentiles (upper bucket edges); `null` before the first frame.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

impl<'a> PipelineStatus<'a> {
    pub fn of(pipeline: &'a PipelineHandle) -> Self {
        let latency = pipeline.stats.latency.snapshot();
        // Microsecond resolution is plenty for percentiles good to 5%.
        let ms = |q| {
            latency
                .quantile(q)
                .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
        };
        let (depth, capacity) = pipeline.queue_depth();
        Self {
            name: &pipeline.name,
            model: pipeline.model.to_string(),
            state: pipeline.stats.state(),
            frames_in: pipeline.stats.frames_in(),
            frames_out: pipeline.stats.frames_out(),
            dropped: HopCounts {
                input: pipeline.input_drops.get(),
                output: pipeline.output_drops.get(),
            },
            queue: Queue { depth, capacity },
            latency_ms: Latency {
                p50: ms(0.5),
                p99: ms(0.99),
            },
            reconnects: pipeline.stats.reconnects(),
            outages: pipeline.stats.outages(),
            outputs: pipeline.stats.outputs(),
            uptime_s: (pipeline.uptime().as_secs_f64() * 1e3).round() / 1e3,
        }
    }
}

async fn pipelines(State(view): State<Arc<EngineView>>) -> Response {
    let statuses: Vec<PipelineStatus<'_>> =
        view.pipelines().iter().map(PipelineStatus::of).collect();
    axum::Json(statuses).into_response()
}

async fn metrics(State(view): State<Arc<EngineView>>) -> Response {
    (
        [(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)],
        super::metrics::render(&view),
    )
        .into_response()
}
