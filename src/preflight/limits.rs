//! File descriptors: the soft limit raised to the hard one at start, and an estimate of what
//! the configured pipelines need, so that a daemon that would run out refuses to start with a
//! clear error instead of leaving pipelines stuck in `starting` and GStreamer flooding the log.

use crate::config::{Config, SinkConfig, SourceKind};

/// What the process holds before any pipeline: stdio, the control plane, logging, GStreamer's
/// registry and the model runtime.
const BASE: u64 = 64;
/// Each pipeline: the source and output pipelines' buses and wake-ups, their threads' polls.
const PER_PIPELINE: u64 = 16;
/// An RTSP source: its TCP connection, RTP/RTCP sockets and their pollers.
const PER_RTSP_SOURCE: u64 = 16;
/// An http(s) source: its connection.
const PER_HTTP_SOURCE: u64 = 8;
/// A recording: its own pipeline and the open file.
const PER_FILE: u64 = 6;
/// An RTSP mount with a few clients (each a socket or a pair of UDP sockets).
const PER_RTSP_SINK: u64 = 24;
/// A UDP or launch sink.
const PER_OTHER_SINK: u64 = 6;

/// Raises the soft file-descriptor limit to the hard one; returns the soft limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit of this process.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return u64::MAX;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// About how many file descriptors `config`'s pipelines need at most.
pub fn descriptors_needed(config: &Config) -> u64 {
    // Each control-plane connection is a socket.
    let mut need = BASE + config.daemon.http.max_connections as u64;
    for pipeline in &config.pipelines {
        let pipeline = &pipeline.config;
        need += PER_PIPELINE;
        need += match &pipeline.source.kind {
            kind if kind.is_rtsp() => PER_RTSP_SOURCE,
            SourceKind::Uri(uri) if uri.starts_with("http") => PER_HTTP_SOURCE,
            _ => 2,
        };
        for sink in &pipeline.sinks {
            need += match sink {
                SinkConfig::File(_) | SinkConfig::Depth16(_) => PER_FILE,
                SinkConfig::Rtsp(_) => PER_RTSP_SINK,
                SinkConfig::Udp(_) | SinkConfig::Launch(_) => PER_OTHER_SINK,
                SinkConfig::Display(_) => PER_OTHER_SINK,
            };
        }
        need += pipeline.metadata.len() as u64;
    }
    need
}

/// Refuses a configuration that needs more descriptors than `limit` allows.
pub fn check_descriptors(config: &Config, limit: u64) -> Result<(), String> {
    let need = descriptors_needed(config);
    if need > limit {
        return Err(format!(
            "the {} configured pipelines and {} control-plane connections (http.max_connections) need about {need} file descriptors, but this process may open {limit}: \
             raise the limit (LimitNOFILE= in the systemd unit, or ulimit -n), run fewer pipelines or lower http.max_connections",
            config.pipelines.len(),
            config.daemon.http.max_connections
        ));
    }
    Ok(())
}
