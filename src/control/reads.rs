//! The read-only endpoints: the status page, liveness and readiness, the pipelines as JSON,
//! and the Prometheus metrics. They only read the shared view; they never block on the frame
//! path.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::connections::ConnectionStats;
use crate::media::live::ViewerKind;
use crate::media::snapshot::Snapshot;
use crate::pipeline::stats::{PipelineState, seconds};
use crate::pipeline::view::{PipelineHandle, SharedView};

/// The status page: one static file; it reads `/api/pipelines` itself.
pub async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                super::page::content_security_policy(),
            ),
        ],
        super::page::PAGE,
    )
        .into_response()
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn not_found() -> (StatusCode, &'static str) {
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

pub async fn readyz(State(view): State<SharedView>) -> Response {
    let view = view.current();
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
    /// `state`, plus `attempt` and `last_error` when reconnecting, `since`, `age_s` and
    /// `attempt` when stalled, `error` when failed.
    #[serde(flatten)]
    pub state: PipelineState,
    /// Seconds since the source delivered its last frame (since the pipeline started while
    /// none has come).
    pub last_frame_age_s: f64,
    pub frames_in: u64,
    /// Frames handed to the encoder (or, without video, whose metadata was written).
    pub frames_out: u64,
    pub dropped: HopCounts,
    /// Frames lost to a failure (not a queue's policy), by reason; empty when none was.
    pub lost: std::collections::BTreeMap<&'static str, u64>,
    /// Frames the RTSP media's queue dropped while its clients were paused or slow.
    pub rtsp_dropped: u64,
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
    /// Whether `snapshot.jpg` can show its latest frame (it publishes video).
    pub snapshot: bool,
    /// Each published sink (MQTT, Kafka): its broker's state, buffer, what it published and
    /// dropped.
    pub sinks: Vec<crate::publish::SinkStatus>,
    /// Its live viewers in browsers now, and what they lost.
    pub viewers: Viewers,
}

/// A pipeline's live viewers ([`crate::media::live`]).
#[derive(Debug, Serialize)]
pub struct Viewers {
    pub webrtc: usize,
    pub mse: usize,
    /// Encoded frames a slow viewer did not get (that viewer alone; the pipeline lost none).
    pub dropped: u64,
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
            last_frame_age_s: seconds(pipeline.stats.source.last_frame_age()),
            frames_in: pipeline.stats.frames_in(),
            frames_out: pipeline.stats.frames_out(),
            dropped: HopCounts {
                input: pipeline.input_drops.get(),
                output: pipeline.output_drops.get(),
            },
            lost: pipeline.stats.losses(),
            rtsp_dropped: pipeline.stats.rtsp_dropped.get(),
            queue: Queue { depth, capacity },
            latency_ms: Latency {
                p50: ms(0.5),
                p99: ms(0.99),
            },
            reconnects: pipeline.stats.reconnects(),
            outages: pipeline.stats.outages(),
            outputs: pipeline.stats.outputs(),
            uptime_s: (pipeline.uptime().as_secs_f64() * 1e3).round() / 1e3,
            snapshot: pipeline.video,
            sinks: pipeline
                .sinks
                .iter()
                .map(|sink| crate::publish::SinkStatus::of(sink))
                .collect(),
            viewers: Viewers {
                webrtc: pipeline.stats.live.viewers(ViewerKind::Webrtc),
                mse: pipeline.stats.live.viewers(ViewerKind::Mse),
                dropped: pipeline.stats.live.dropped(),
            },
        }
    }
}

pub async fn pipelines(State(view): State<SharedView>) -> Response {
    let view = view.current();
    let statuses: Vec<PipelineStatus<'_>> = view
        .pipelines()
        .iter()
        .map(|p| PipelineStatus::of(p))
        .collect();
    axum::Json(statuses).into_response()
}

pub async fn metrics(
    State(view): State<SharedView>,
    Extension(connections): Extension<Arc<ConnectionStats>>,
) -> Response {
    let mut text = super::metrics::render(&view.current());
    text.push_str(&super::metrics::render_connections(&connections));
    ([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response()
}

/// How long a snapshot request waits for a frame when nobody was looking before.
const FIRST_FRAME_WAIT: Duration = Duration::from_secs(2);

/// `GET /api/pipelines/<name>/snapshot.jpg`: the latest frame the pipeline published, with
/// its age (`X-Frame-Age`, seconds) and capture time (`Last-Modified`). Bounded per pipeline
/// (see [`crate::media::snapshot`]): requests beyond what it takes are answered `503` with
/// `Retry-After` at once.
/// With `http.view_token_file`, it needs the view token like the live views.
pub async fn snapshot(
    State(api): State<super::Api>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(response) = super::live::refuse_viewer(&api.live.settings, &headers) {
        return response;
    }
    let Some(pipeline) = api.view.current().pipeline(&name).cloned() else {
        return problem(
            StatusCode::NOT_FOUND,
            &format!("no pipeline named '{name}'"),
        );
    };
    if !pipeline.video {
        return problem(
            StatusCode::NOT_FOUND,
            &format!("pipeline '{name}' publishes no video, so it has no snapshot"),
        );
    }
    let retry_later = |message: &str| {
        let mut response = problem(StatusCode::SERVICE_UNAVAILABLE, message);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        response
    };
    match pipeline.stats.latest_frame.snapshot(FIRST_FRAME_WAIT).await {
        Snapshot::Jpeg(jpeg) => {
            let age = format!("{:.3}", jpeg.age().as_secs_f64());
            (
                [
                    (header::CONTENT_TYPE, "image/jpeg".to_string()),
                    (header::CACHE_CONTROL, "no-store".to_string()),
                    (
                        header::LAST_MODIFIED,
                        httpdate::fmt_http_date(jpeg.captured_wall),
                    ),
                    (header::HeaderName::from_static("x-frame-age"), age),
                ],
                jpeg.bytes.to_vec(),
            )
                .into_response()
        }
        Snapshot::NoFrame => retry_later(&format!("pipeline '{name}' has published no frame yet")),
        Snapshot::Busy => retry_later(&format!(
            "too many snapshot requests for pipeline '{name}' at once; try again"
        )),
        Snapshot::Failed(error) => problem(StatusCode::INTERNAL_SERVER_ERROR, &error),
    }
}

fn problem(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}
