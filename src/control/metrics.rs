//! `/metrics`: the engine's counters in the Prometheus text exposition format, version 0.0.4.
//!
//! Per pipeline (label `pipeline`): `visiond_frames_in_total`, `visiond_frames_out_total`,
//! `visiond_frames_dropped_total` (+ `hop="input"|"output"`), `visiond_queue_depth` and
//! `visiond_queue_capacity` (the first hop), `visiond_pipeline_state` (+ `state`: 1 for the
//! current one, 0 for the other six), `visiond_source_last_frame_age_seconds`,
//! `visiond_snapshots_refused_total`, `visiond_source_outages_total`,
//! `visiond_reconnect_attempts_total` (and its earlier name `visiond_reconnects_total`),
//! `visiond_output_up` (+ `output`), `visiond_output_failures_total` (+ `reason`),
//! `visiond_output_restarts_total`, `visiond_frames_lost_total` (+ `reason`),
//! `visiond_rtsp_dropped_total`, `visiond_webrtc_viewers` (+ `kind`: webrtc, mse),
//! `visiond_live_dropped_total`, `visiond_live_keyframe_requests_total`,
//! `visiond_recording_segments_deleted_total` and the histogram
//! `visiond_frame_latency_seconds`; per published sink (+ `sink`): `visiond_metadata_published_total`,
//! `visiond_metadata_dropped_total` (+ `reason`), `visiond_metadata_buffered`. Per broker
//! (label `broker`): `visiond_broker_connected` (+ `kind`), `visiond_broker_connects_total`,
//! `visiond_events_published_total`, `visiond_events_dropped_total`. Per inference worker (label `model`):
//! `visiond_inference_batches_total`, `visiond_inference_frames_total`,
//! `visiond_inference_failed_frames_total`, `visiond_batch_size_max` and the histogram
//! `visiond_inference_batch_size`; for a served model (`remote`) also
//! `visiond_remote_requests_total`, `visiond_remote_in_flight`, `visiond_remote_up`,
//! `visiond_remote_request_failures_total` (+ `reason`: timeout, unavailable, error) and the
//! histogram `visiond_remote_request_seconds`. Per CUDA device a model runs on: `visiond_gpu_memory_bytes`
//! (`device`, `kind` allocated or reserved). For the RTSP server: `visiond_rtsp_clients` and
//! `visiond_rtsp_clients_closed_total` (+ `reason`). For the process: `visiond_build_info` (labels `version`,
//! `commit`, `libtorch`, `gstreamer`) and the standard `process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, `process_open_fds`, `process_threads`,
//! `process_start_time_seconds`. The control plane's own connections
//! ([`render_connections`]): `visiond_http_connections_open`, `visiond_http_connections_max`,
//! `visiond_http_connections_closed_total` (+ `reason`), `visiond_http_connections_refused_total`
//! and `visiond_http_accept_errors_total`.
//!
//! The latency histogram's `le` bounds are edges of the engine's own log buckets (5% wide),
//! the ones nearest 1 ms, 2.5 ms, 5 ms, … 10 s, so every `_bucket` count is exact rather
//! than interpolated.

use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::connections::{Closed, ConnectionStats};
use super::process::ProcessStats;
use crate::media::live::ViewerKind;
use crate::pipeline::stats::{LatencyHistogram, Loss, PipelineState, seconds};
use crate::pipeline::view::EngineView;
use crate::pipeline::worker::{BATCH_SIZE_BUCKETS, WorkerStats};

/// The `Content-Type` of the 0.0.4 text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The bounds the latency histogram is exposed at, before snapping to bucket edges.
const LATENCY_BOUNDS_S: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The log-bucket indices whose upper edges are the exposed `le` bounds, ascending.
pub fn latency_buckets() -> Vec<usize> {
    let mut indices: Vec<usize> = LATENCY_BOUNDS_S
        .iter()
        .map(|&s| LatencyHistogram::nearest_bucket(Duration::from_secs_f64(s)))
        .collect();
    indices.dedup();
    indices
}

/// Renders every metric family of `view`.
pub fn render(view: &EngineView) -> String {
    let mut out = Exposition::default();
    let pipelines = view.pipelines();

    out.family(
        "visiond_frames_in_total",
        "counter",
        "Frames taken from the pipeline's source.",
    );
    for p in pipelines {
        out.sample(
            "visiond_frames_in_total",
            &[("pipeline", &p.name)],
            p.stats.frames_in(),
        );
    }
    out.family(
        "visiond_frames_out_total",
        "counter",
        "Frames written to the pipeline's outputs (video and/or metadata).",
    );
    for p in pipelines {
        out.sample(
            "visiond_frames_out_total",
            &[("pipeline", &p.name)],
            p.stats.frames_out(),
        );
    }
    out.family(
        "visiond_frames_dropped_total",
        "counter",
        "Frames dropped at a full hop: input is the source's hop, output the model's.",
    );
    for p in pipelines {
        for (hop, drops) in [("input", &p.input_drops), ("output", &p.output_drops)] {
            out.sample(
                "visiond_frames_dropped_total",
                &[("pipeline", &p.name), ("hop", hop)],
                drops.get(),
            );
        }
    }
    out.family(
        "visiond_queue_depth",
        "gauge",
        "Frames waiting in the pipeline's first hop.",
    );
    for p in pipelines {
        out.sample(
            "visiond_queue_depth",
            &[("pipeline", &p.name)],
            p.queue_depth().0,
        );
    }
    out.family(
        "visiond_queue_capacity",
        "gauge",
        "Capacity of the pipeline's first hop.",
    );
    for p in pipelines {
        out.sample(
            "visiond_queue_capacity",
            &[("pipeline", &p.name)],
            p.queue_depth().1,
        );
    }
    out.family(
        "visiond_pipeline_state",
        "gauge",
        "1 for the pipeline's current state, 0 for the others.",
    );
    for p in pipelines {
        let current = p.stats.state().name();
        for state in PipelineState::NAMES {
            out.sample(
                "visiond_pipeline_state",
                &[("pipeline", &p.name), ("state", state)],
                u8::from(state == current),
            );
        }
    }
    out.family(
        "visiond_source_last_frame_age_seconds",
        "gauge",
        "Seconds since the pipeline's source delivered its last frame (since the pipeline started while none has come).",
    );
    for p in pipelines {
        out.sample(
            "visiond_source_last_frame_age_seconds",
            &[("pipeline", &p.name)],
            seconds(p.stats.source.last_frame_age()),
        );
    }
    out.family(
        "visiond_snapshots_refused_total",
        "counter",
        "Snapshot requests answered 503 at once because too many were already waiting for the pipeline's snapshot.",
    );
    for p in pipelines {
        out.sample(
            "visiond_snapshots_refused_total",
            &[("pipeline", &p.name)],
            p.stats.latest_frame.refused(),
        );
    }
    out.family(
        "visiond_source_outages_total",
        "counter",
        "Times the pipeline's source was lost (one outage, however many reconnect attempts).",
    );
    for p in pipelines {
        out.sample(
            "visiond_source_outages_total",
            &[("pipeline", &p.name)],
            p.stats.outages(),
        );
    }
    // visiond_reconnects_total is the earlier name of the attempts counter, kept for
    // dashboards that use it.
    for (name, help) in [
        (
            "visiond_reconnect_attempts_total",
            "Reconnect attempts of the pipeline's source (each try counts).",
        ),
        (
            "visiond_reconnects_total",
            "Reconnect attempts (the earlier name of visiond_reconnect_attempts_total).",
        ),
    ] {
        out.family(name, "counter", help);
        for p in pipelines {
            out.sample(name, &[("pipeline", &p.name)], p.stats.reconnects());
        }
    }
    out.family(
        "visiond_output_up",
        "gauge",
        "1 while the output (video, or one recording: file <path>) runs, 0 while it is down.",
    );
    for p in pipelines {
        for health in p.stats.outputs() {
            out.sample(
                "visiond_output_up",
                &[("pipeline", &p.name), ("output", &health.output)],
                u8::from(health.up),
            );
        }
    }
    out.family(
        "visiond_output_failures_total",
        "counter",
        "Output and recording failures, by reason (disk full, write error, sink error, ...).",
    );
    for p in pipelines {
        for (reason, count) in p.stats.output_failures() {
            out.sample(
                "visiond_output_failures_total",
                &[("pipeline", &p.name), ("reason", &reason)],
                count,
            );
        }
    }
    out.family(
        "visiond_output_restarts_total",
        "counter",
        "Times the pipeline's video output failed and was rebuilt.",
    );
    for p in pipelines {
        out.sample(
            "visiond_output_restarts_total",
            &[("pipeline", &p.name)],
            p.stats.output_restarts(),
        );
    }
    out.family(
        "visiond_frames_lost_total",
        "counter",
        "Frames lost to a failure rather than dropped by a queue's policy, by reason.",
    );
    for p in pipelines {
        let losses = p.stats.losses();
        for loss in Loss::ALL {
            let count = losses.get(loss.label()).copied().unwrap_or(0);
            out.sample(
                "visiond_frames_lost_total",
                &[("pipeline", &p.name), ("reason", loss.label())],
                count,
            );
        }
    }
    out.family(
        "visiond_rtsp_dropped_total",
        "counter",
        "Frames an RTSP media's bounded queue dropped while its clients were paused or slow.",
    );
    for p in pipelines {
        out.sample(
            "visiond_rtsp_dropped_total",
            &[("pipeline", &p.name)],
            p.stats.rtsp_dropped.get(),
        );
    }
    out.family(
        "visiond_webrtc_viewers",
        "gauge",
        "Live viewers in browsers now, by how they watch (WebRTC through WHEP, or MSE).",
    );
    for p in pipelines {
        for kind in [ViewerKind::Webrtc, ViewerKind::Mse] {
            out.sample(
                "visiond_webrtc_viewers",
                &[("pipeline", &p.name), ("kind", kind.name())],
                p.stats.live.viewers(kind),
            );
        }
    }
    out.family(
        "visiond_live_dropped_total",
        "counter",
        "Encoded frames a slow live viewer did not get (that viewer alone lost them).",
    );
    for p in pipelines {
        out.sample(
            "visiond_live_dropped_total",
            &[("pipeline", &p.name)],
            p.stats.live.dropped(),
        );
    }
    out.family(
        "visiond_live_keyframe_requests_total",
        "counter",
        "Keyframes asked of the encoder for live viewers that joined or lost a frame.",
    );
    for p in pipelines {
        out.sample(
            "visiond_live_keyframe_requests_total",
            &[("pipeline", &p.name)],
            p.stats.live.keyframe_requests(),
        );
    }
    out.family(
        "visiond_recording_segments_deleted_total",
        "counter",
        "Recording segments deleted by their retention (max_age, max_bytes).",
    );
    for p in pipelines {
        out.sample(
            "visiond_recording_segments_deleted_total",
            &[("pipeline", &p.name)],
            p.stats.segments_deleted(),
        );
    }
    out.family(
        "visiond_frame_latency_seconds",
        "histogram",
        "Time from the source's appsink to the outputs, per frame.",
    );
    let buckets = latency_buckets();
    for p in pipelines {
        let snapshot = p.stats.latency.snapshot();
        for &index in &buckets {
            let le = format_bound(LatencyHistogram::upper_edge(index).as_secs_f64());
            out.sample(
                "visiond_frame_latency_seconds_bucket",
                &[("pipeline", &p.name), ("le", &le)],
                snapshot.cumulative(index),
            );
        }
        let count = snapshot.count();
        out.sample(
            "visiond_frame_latency_seconds_bucket",
            &[("pipeline", &p.name), ("le", "+Inf")],
            count,
        );
        out.sample(
            "visiond_frame_latency_seconds_sum",
            &[("pipeline", &p.name)],
            snapshot.sum.as_secs_f64(),
        );
        out.sample(
            "visiond_frame_latency_seconds_count",
            &[("pipeline", &p.name)],
            count,
        );
    }

    type Field = fn(&WorkerStats) -> &AtomicU64;
    let worker_families: [(&str, &str, &str, Field); 4] = [
        (
            "visiond_inference_batches_total",
            "counter",
            "Batches the model's inference worker ran.",
            |s| &s.batches,
        ),
        (
            "visiond_inference_frames_total",
            "counter",
            "Frames the model's inference worker processed, in all batches.",
            |s| &s.frames,
        ),
        (
            "visiond_inference_failed_frames_total",
            "counter",
            "Frames the model's inference worker could not process.",
            |s| &s.failed_frames,
        ),
        (
            "visiond_batch_size_max",
            "gauge",
            "The largest batch the model's inference worker has run.",
            |s| &s.largest_batch,
        ),
    ];
    for (name, kind, help, field) in worker_families {
        out.family(name, kind, help);
        for worker in view.workers() {
            out.sample(
                name,
                &[("model", &worker.model)],
                field(&worker.stats).load(Ordering::Relaxed),
            );
        }
    }
    render_publishing(&mut out, view);
    render_batch_sizes(&mut out, view);
    render_remote(&mut out, view);
    render_gpu_memory(&mut out, view);
    render_rtsp_clients(&mut out, view);
    render_process(&mut out);
    out.text
}

/// The published sinks (MQTT, Kafka) of every pipeline, and every broker connection.
fn render_publishing(out: &mut Exposition, view: &EngineView) {
    let sinks: Vec<(&str, &crate::publish::SinkShared)> = view
        .pipelines()
        .iter()
        .flat_map(|p| p.sinks.iter().map(move |s| (p.name.as_str(), s.as_ref())))
        .collect();
    out.family(
        "visiond_metadata_published_total",
        "counter",
        "Results the broker took from the pipeline's published sink (acknowledged for qos 1 and Kafka).",
    );
    for (pipeline, sink) in &sinks {
        out.sample(
            "visiond_metadata_published_total",
            &[("pipeline", pipeline), ("sink", &sink.name)],
            sink.published(),
        );
    }
    out.family(
        "visiond_metadata_dropped_total",
        "counter",
        "Results a published sink did not deliver, by reason: buffer_full (the oldest, while the broker was away or slow), rejected (by the broker), shutdown.",
    );
    for (pipeline, sink) in &sinks {
        for reason in crate::publish::DropReason::ALL {
            out.sample(
                "visiond_metadata_dropped_total",
                &[
                    ("pipeline", pipeline),
                    ("sink", &sink.name),
                    ("reason", reason.label()),
                ],
                sink.dropped_for(reason),
            );
        }
    }
    out.family(
        "visiond_metadata_buffered",
        "gauge",
        "Results waiting in a published sink's buffer for its broker.",
    );
    for (pipeline, sink) in &sinks {
        out.sample(
            "visiond_metadata_buffered",
            &[("pipeline", pipeline), ("sink", &sink.name)],
            sink.spool.len(),
        );
    }
    out.family(
        "visiond_broker_connected",
        "gauge",
        "1 while the daemon is connected to the broker (MQTT) or to a broker of the cluster (Kafka).",
    );
    for broker in view.brokers() {
        out.sample(
            "visiond_broker_connected",
            &[("broker", &broker.name), ("kind", broker.kind)],
            u8::from(broker.is_connected()),
        );
    }
    out.family(
        "visiond_broker_connects_total",
        "counter",
        "Times the daemon connected to the broker (1 plus its reconnections).",
    );
    for broker in view.brokers() {
        out.sample(
            "visiond_broker_connects_total",
            &[("broker", &broker.name)],
            broker.connects(),
        );
    }
    out.family(
        "visiond_events_published_total",
        "counter",
        "Events (states, output failures, availability) the broker took.",
    );
    for broker in view.brokers() {
        out.sample(
            "visiond_events_published_total",
            &[("broker", &broker.name)],
            broker.events_published(),
        );
    }
    out.family(
        "visiond_events_dropped_total",
        "counter",
        "Events not delivered to the broker (its event buffer full, refused, or left at shutdown).",
    );
    for broker in view.brokers() {
        out.sample(
            "visiond_events_dropped_total",
            &[("broker", &broker.name)],
            broker.events_dropped(),
        );
    }
}

/// The control plane's connections: how many are open against the cap, and every one the
/// server closed or refused.
pub fn render_connections(stats: &ConnectionStats) -> String {
    let mut out = Exposition::default();
    out.family(
        "visiond_http_connections_open",
        "gauge",
        "Control plane connections open now.",
    );
    out.sample("visiond_http_connections_open", &[], stats.open());
    out.family(
        "visiond_http_connections_max",
        "gauge",
        "The cap on control plane connections (http.max_connections).",
    );
    out.sample("visiond_http_connections_max", &[], stats.max());
    let closed = "visiond_http_connections_closed_total";
    out.family(
        closed,
        "counter",
        "Control plane connections the server closed: headers too slow (header_timeout), quiet too long (idle_timeout), or displaced at the cap by a new connection (evicted).",
    );
    for reason in Closed::ALL {
        out.sample(closed, &[("reason", reason.as_str())], stats.closed(reason));
    }
    out.family(
        "visiond_http_connections_refused_total",
        "counter",
        "Connections closed unanswered: the cap was reached and no slot freed within a second.",
    );
    out.sample(
        "visiond_http_connections_refused_total",
        &[],
        stats.refused(),
    );
    out.family(
        "visiond_http_accept_errors_total",
        "counter",
        "Failed accepts on the control plane's socket (the process out of file descriptors, say).",
    );
    out.sample(
        "visiond_http_accept_errors_total",
        &[],
        stats.accept_errors(),
    );
    out.text
}

/// The batch sizes each model's worker ran, as a histogram.
fn render_batch_sizes(out: &mut Exposition, view: &EngineView) {
    let name = "visiond_inference_batch_size";
    out.family(
        name,
        "histogram",
        "Frames per batch the model's inference worker ran.",
    );
    for worker in view.workers() {
        let counts = worker.stats.batch_size_counts();
        let mut cumulative = 0;
        for (edge, count) in BATCH_SIZE_BUCKETS.iter().zip(&counts) {
            cumulative += count;
            let le = edge.to_string();
            out.sample(
                &format!("{name}_bucket"),
                &[("model", &worker.model), ("le", &le)],
                cumulative,
            );
        }
        let model = [("model", worker.model.as_str())];
        out.sample(
            &format!("{name}_bucket"),
            &[("model", &worker.model), ("le", "+Inf")],
            cumulative,
        );
        out.sample(
            &format!("{name}_sum"),
            &model,
            worker.stats.frames.load(Ordering::Relaxed),
        );
        out.sample(&format!("{name}_count"), &model, cumulative);
    }
}

/// The clients of served models: requests, outstanding ones, failures by reason, whether the
/// server takes requests, and the requests' latency.
fn render_remote(out: &mut Exposition, view: &EngineView) {
    use crate::runtime::RemoteFailure;
    use crate::runtime::remote::stats::LATENCY_BOUNDS_S;
    let served: Vec<_> = view
        .workers()
        .iter()
        .filter_map(|w| w.remote.as_ref().map(|stats| (w.model.as_str(), stats)))
        .collect();
    if served.is_empty() {
        return;
    }
    out.family(
        "visiond_remote_requests_total",
        "counter",
        "Inference requests (one batch each) sent to the served model's server.",
    );
    for (model, stats) in &served {
        out.sample(
            "visiond_remote_requests_total",
            &[("model", model)],
            stats.requests.load(Ordering::Relaxed),
        );
    }
    out.family(
        "visiond_remote_in_flight",
        "gauge",
        "Requests sent to the served model's server and not answered yet (at most remote.max_in_flight).",
    );
    for (model, stats) in &served {
        out.sample(
            "visiond_remote_in_flight",
            &[("model", model)],
            stats.in_flight.load(Ordering::Relaxed),
        );
    }
    out.family(
        "visiond_remote_up",
        "gauge",
        "1 while the served model's server takes requests, 0 while its pipelines wait for it.",
    );
    for (model, stats) in &served {
        out.sample(
            "visiond_remote_up",
            &[("model", model)],
            u8::from(stats.is_up()),
        );
    }
    out.family(
        "visiond_remote_request_failures_total",
        "counter",
        "Requests to the served model that failed, by reason: timeout, unavailable, error. Their frames are dropped.",
    );
    for (model, stats) in &served {
        for failure in RemoteFailure::ALL {
            out.sample(
                "visiond_remote_request_failures_total",
                &[("model", model), ("reason", failure.as_str())],
                stats.failures(failure),
            );
        }
    }
    let name = "visiond_remote_request_seconds";
    out.family(
        name,
        "histogram",
        "Time from sending a request to the served model to its answer (or failure).",
    );
    for (model, stats) in &served {
        let cumulative = stats.latency_cumulative();
        for (bound, count) in LATENCY_BOUNDS_S.iter().zip(&cumulative) {
            let le = format_bound(*bound);
            out.sample(
                &format!("{name}_bucket"),
                &[("model", model), ("le", &le)],
                count,
            );
        }
        let total = cumulative.last().copied().unwrap_or(0);
        out.sample(
            &format!("{name}_bucket"),
            &[("model", model), ("le", "+Inf")],
            total,
        );
        out.sample(
            &format!("{name}_sum"),
            &[("model", model)],
            stats.latency_sum().as_secs_f64(),
        );
        out.sample(&format!("{name}_count"), &[("model", model)], total);
    }
}

/// GPU memory libtorch holds on each CUDA device a model runs on.
/// The RTSP server's clients, when it runs.
fn render_rtsp_clients(out: &mut Exposition, view: &EngineView) {
    let Some(stats) = view.rtsp_clients() else {
        return;
    };
    out.family(
        "visiond_rtsp_clients",
        "gauge",
        "Clients connected to the RTSP server now (rtsp.max_clients at most).",
    );
    out.sample(
        "visiond_rtsp_clients",
        &[],
        stats.clients.load(Ordering::Relaxed),
    );
    out.family(
        "visiond_rtsp_clients_closed_total",
        "counter",
        "RTSP clients the server closed: past rtsp.max_clients, or without a session after rtsp.setup_timeout_ms.",
    );
    for (reason, count) in [
        ("max_clients", &stats.refused),
        ("setup_timeout", &stats.idle_closed),
    ] {
        out.sample(
            "visiond_rtsp_clients_closed_total",
            &[("reason", reason)],
            count.load(Ordering::Relaxed),
        );
    }
}

fn render_gpu_memory(out: &mut Exposition, view: &EngineView) {
    let name = "visiond_gpu_memory_bytes";
    out.family(
        name,
        "gauge",
        "GPU memory libtorch holds per CUDA device in use: kind allocated (tensors) or reserved (cached from the driver).",
    );
    let mut devices: Vec<usize> = view
        .workers()
        .iter()
        .filter_map(|w| w.cuda_device)
        .collect();
    devices.sort_unstable();
    devices.dedup();
    for index in devices {
        match crate::runtime::native::cuda_memory(index) {
            Ok((allocated, reserved)) => {
                let device = format!("cuda:{index}");
                out.sample(
                    name,
                    &[("device", &device), ("kind", "allocated")],
                    allocated,
                );
                out.sample(name, &[("device", &device), ("kind", "reserved")], reserved);
            }
            Err(error) => tracing::debug!(index, %error, "no GPU memory figures"),
        }
    }
}

/// What this build is, and the process's own resources.
fn render_process(out: &mut Exposition) {
    out.family(
        "visiond_build_info",
        "gauge",
        "Always 1; the labels say which visiond (version and git commit), libtorch and GStreamer this is.",
    );
    let gstreamer = crate::media::registry::version();
    out.sample(
        "visiond_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", env!("VISIOND_COMMIT")),
            ("libtorch", crate::runtime::LIBTORCH_VERSION),
            ("gstreamer", &gstreamer),
        ],
        1,
    );
    let Some(process) = ProcessStats::read() else {
        return;
    };
    let families: [(&str, &str, &str, f64); 5] = [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            process.resident_bytes as f64,
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            process.cpu.as_secs_f64(),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            process.open_fds as f64,
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            process.threads as f64,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            process.start_time_s,
        ),
    ];
    for (name, kind, help, value) in families {
        out.family(name, kind, help);
        out.sample(name, &[], value);
    }
}

/// A bucket bound with 6 significant digits (the edges are irrational; 6 digits keep them
/// well inside their 5% bucket).
fn format_bound(seconds: f64) -> String {
    let magnitude = seconds.log10().floor() as i32;
    let decimals = (5 - magnitude).max(0) as usize;
    let text = format!("{seconds:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A label value escaped as the text format asks: backslash, double quote and line feed.
pub fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // HELP text escapes backslash and line feed; ours has neither, but stay correct.
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label_value(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            escape_label_value("a\\b\"c\nd"),
            "a\\\\b\\\"c\\nd".to_string()
        );
        assert_eq!(escape_label_value("front-door.1"), "front-door.1");
    }

    #[test]
    fn latency_bounds_are_bucket_edges_near_the_round_values() {
        let buckets = latency_buckets();
        assert_eq!(buckets.len(), LATENCY_BOUNDS_S.len());
        assert!(buckets.windows(2).all(|w| w[0] < w[1]));
        for (&index, &target) in buckets.iter().zip(&LATENCY_BOUNDS_S) {
            let edge = LatencyHistogram::upper_edge(index).as_secs_f64();
            assert!((edge / target - 1.0).abs() < 0.03, "{edge} for {target}");
            let label: f64 = format_bound(edge).parse().unwrap();
            assert!((label / edge - 1.0).abs() < 1e-5, "{label} for {edge}");
        }
    }

    #[test]
    fn bounds_print_plainly() {
        assert_eq!(format_bound(0.00098257455), "0.000982575");
        assert_eq!(format_bound(1.0), "1");
        assert_eq!(format_bound(10.18346), "10.1835");
    }
}
