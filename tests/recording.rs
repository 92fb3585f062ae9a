//! Recordings on wall-clock time: a camera outage stays in a recording as a real gap (and starts
//! a new segment), segment names carry their start times, timestamps only increase, and
//! retention deletes the oldest segments. Real GStreamer, a real RTSP camera stand-in, real
//! files read back with ffprobe.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use visiond::pipeline::engine::Engine;
use visiond::pipeline::stats::PipelineState;

use common::*;

/// One packet of a file's video stream, as ffprobe reads it.
#[derive(Debug, Clone, Copy)]
struct Packet {
    pts: f64,
    dts: f64,
    keyframe: bool,
}

/// The video packets of `path` in file order.
fn packets(path: &Path) -> Vec<Packet> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["packet=pts_time,dts_time,flags", "-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let time = |packet: &serde_json::Value, key: &str| -> f64 {
        packet[key]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{}: packet without {key}: {packet}", path.display()))
    };
    json["packets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|packet| Packet {
            pts: time(packet, "pts_time"),
            dts: time(packet, "dts_time"),
            keyframe: packet["flags"].as_str().unwrap_or_default().contains('K'),
        })
        .collect()
}

/// Asserts that decoding timestamps only increase and that no frame is shown before it is
/// decoded; returns the span from the first frame to the last.
fn check_timestamps(path: &Path, packets: &[Packet]) -> f64 {
    assert!(packets.len() >= 2, "{}: {packets:?}", path.display());
    assert!(
        packets[0].keyframe,
        "{} starts with a delta frame",
        path.display()
    );
    for pair in packets.windows(2) {
        assert!(
            pair[1].dts > pair[0].dts,
            "{}: dts {} after {}",
            path.display(),
            pair[1].dts,
            pair[0].dts
        );
    }
    for packet in packets {
        assert!(packet.pts >= packet.dts, "{}: {packet:?}", path.display());
    }
    let first = packets.iter().map(|p| p.pts).fold(f64::MAX, f64::min);
    let last = packets.iter().map(|p| p.pts).fold(f64::MIN, f64::max);
    last - first
}

/// The largest step between two decoding timestamps, and the packet after it.
fn largest_gap(packets: &[Packet]) -> (f64, Packet) {
    packets
        .windows(2)
        .map(|pair| (pair[1].dts - pair[0].dts, pair[1]))
        .fold((0.0, packets[0]), |a, b| if b.0 > a.0 { b } else { a })
}

/// The segments in `dir` by name, each with the start time and counter its name carries
/// (`<stem>-YYYYMMDDTHHMMSSZ-NNNNN.<ext>`).
fn segments(dir: &Path, stem: &str) -> Vec<(PathBuf, SystemTime, u32)> {
    let mut found: Vec<(PathBuf, SystemTime, u32)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_stem()?.to_str()?.to_string();
            let rest = name.strip_prefix(&format!("{stem}-"))?;
            let (time, index) = rest.split_once('-')?;
            let t = time.as_bytes();
            assert_eq!(t.len(), 16, "{name}");
            let text = format!(
                "{}-{}-{}T{}:{}:{}Z",
                &time[0..4],
                &time[4..6],
                &time[6..8],
                &time[9..11],
                &time[11..13],
                &time[13..15]
            );
            let start = humantime::parse_rfc3339(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            Some((path.clone(), start, index.parse().ok()?))
        })
        .collect();
    found.sort_by_key(|(_, _, index)| *index);
    found
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Seconds from `earlier` to `later` on the wall clock, negative when `later` is earlier.
fn wall_between(earlier: SystemTime, later: SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[test]
fn a_camera_outage_stays_in_recordings_as_a_gap_and_starts_a_new_segment() {
    let camera = Camera::start(0);
    let port = camera.port();
    let out = tempfile::tempdir().unwrap();
    let plain = out.path().join("door.mp4");
    let segmented_dir = out.path().join("segments");
    std::fs::create_dir(&segmented_dir).unwrap();
    let (_dir, config) = temp_tree(
        "",
        &[Pipeline::new("door")
            .source(
                Source::uri(&format!("rtsp://127.0.0.1:{port}/cam"))
                    .option("rtsp", "{ latency_ms: 0 }")
                    .reconnect(200, 1000),
            )
            .model("none")
            // Keyframes far apart: one right after the outage is there because it was asked for.
            .encoder("{ keyframe_interval: 300 }")
            .file_sink(&plain)
            // Long segments: the outage is what splits this recording.
            .file_sink_with(&segmented_dir.join("door.mkv"), "segment_s: 600")],
    );
    let began = SystemTime::now();
    let engine = Engine::start(&config, &no_models).unwrap();
    let door = engine.pipeline("door").unwrap();
    wait_until("door's first frame", Duration::from_secs(30), || {
        door.stats.frames_out() >= 1
    });
    let first_frame = Instant::now();
    wait_until("2 s of door frames", Duration::from_secs(30), || {
        door.stats.frames_out() >= 60
    });

    // The camera goes away for 5 s: no frame can be taken in that time.
    let lost = Instant::now();
    camera.stop();
    wait_until("door reconnecting", Duration::from_secs(20), || {
        matches!(door.stats.state(), PipelineState::Reconnecting { .. })
    });
    std::thread::sleep(Duration::from_secs(5).saturating_sub(lost.elapsed()));
    let camera = Camera::start(port);
    let back = Instant::now();
    let frames_before = door.stats.frames_out();
    wait_until(
        "door frames after the outage",
        Duration::from_secs(30),
        || door.stats.frames_out() >= frames_before + 60,
    );
    let stopped = Instant::now();
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    camera.stop();
    assert!(
        reports.iter().all(|r| r.state == PipelineState::Finished),
        "{reports:?}"
    );
    assert_eq!(door.stats.outages(), 1);
    let outage = secs(back - lost);
    let recorded = secs(stopped - first_frame);

    // The plain recording: one file whose time covers the outage as a hole of its length.
    let plain_packets = packets(&plain);
    let span = check_timestamps(&plain, &plain_packets);
    assert!(
        span > recorded - 2.0 && span < recorded + 2.0,
        "the file spans {span:.2} s; {recorded:.2} s passed between its first and last frame \
         (the outage was {outage:.2} s)"
    );
    // It plays across the gap: every frame decodes.
    assert_eq!(
        decode_h264(&plain, "qtdemux").frames,
        plain_packets.len(),
        "not every frame of {} decodes",
        plain.display()
    );
    let (hole, after_hole) = largest_gap(&plain_packets);
    assert!(
        hole > outage - 0.5 && hole < outage + 10.0,
        "the largest gap is {hole:.2} s for an outage of {outage:.2} s"
    );
    assert!(
        after_hole.keyframe,
        "the frame after the outage is no keyframe"
    );

    // The segmented recording: a segment before the outage, one after; their names carry
    // their start times, as far apart as the footage and the hole between them.
    let found = segments(&segmented_dir, "door");
    assert_eq!(found.len(), 2, "{found:?}");
    let (before, after) = (&found[0], &found[1]);
    assert_eq!(after.2, before.2 + 1, "{found:?}");
    let (before_packets, after_packets) = (packets(&before.0), packets(&after.0));
    let before_span = check_timestamps(&before.0, &before_packets);
    let after_span = check_timestamps(&after.0, &after_packets);
    // The split is at the outage: each segment is footage without a hole.
    for (path, packets) in [(&before.0, &before_packets), (&after.0, &after_packets)] {
        let (gap, _) = largest_gap(packets);
        assert!(gap < 1.0, "{}: a {gap:.2} s gap inside", path.display());
    }
    let apart = wall_between(before.1, after.1);
    assert!(
        apart > before_span + outage - 2.0 && apart < before_span + outage + 10.0,
        "segments start {apart:.0} s apart; the first spans {before_span:.2} s, the outage \
         was {outage:.2} s"
    );
    // Names are wall-clock times: the first segment started when the test did.
    let since_began = wall_between(began, before.1);
    assert!(
        (-2.0..30.0).contains(&since_began),
        "the first segment is named {since_began:.0} s after the test began"
    );
    eprintln!(
        "outage {outage:.2} s, hole {hole:.2} s; plain file {span:.2} s of {recorded:.2} s; \
         segments {before_span:.2} + {after_span:.2} s, named {apart:.0} s apart"
    );
    // Together the segments and the hole cover what the plain recording does.
    assert!(
        (before_span + hole + after_span - span).abs() < 1.0,
        "segments {before_span:.2} + {after_span:.2} s, hole {hole:.2} s, plain file {span:.2} s"
    );
}

/// A segment file's name for `index` starting at `start`, as visiond writes them.
fn segment_name(stem: &str, start: SystemTime, index: u32, ext: &str) -> String {
    let time = humantime::format_rfc3339_seconds(start)
        .to_string()
        .replace(['-', ':'], "");
    format!("{stem}-{time}-{index:05}.{ext}")
}

#[test]
fn retention_deletes_the_oldest_segments_beyond_max_age_and_max_bytes() {
    let out = tempfile::tempdir().unwrap();
    let kept_dir = out.path().join("kept");
    let tiny_dir = out.path().join("tiny");
    std::fs::create_dir(&kept_dir).unwrap();
    std::fs::create_dir(&tiny_dir).unwrap();
    // Segments of an earlier run: one too old, one too big for the budget, one that fits. The
    // new segments (100 kbit/s) stay far below the budget however slow this machine is.
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let too_old = kept_dir.join(segment_name("cam", now - 100 * 24 * hour, 0, "mp4"));
    let too_big = kept_dir.join(segment_name("cam", now - hour, 1, "mp4"));
    let fits = kept_dir.join(segment_name("cam", now - hour / 2, 2, "mp4"));
    std::fs::write(&too_old, [0u8; 10]).unwrap();
    std::fs::write(&too_big, vec![0u8; 1_100_000]).unwrap();
    std::fs::write(&fits, [0u8; 10]).unwrap();
    let (_dir, config) = temp_tree(
        "",
        &[
            Pipeline::new("kept")
                .source(Source::test(160, 120).fps(30))
                .model("none")
                .encoder("{ bitrate_kbps: 100 }")
                .file_sink_with(
                    &kept_dir.join("cam.mp4"),
                    "segment_s: 1, max_age: 7d, max_bytes: 1000000",
                ),
            Pipeline::new("tiny")
                .source(Source::test(160, 120).fps(30))
                .model("none")
                .encoder("{ bitrate_kbps: 100 }")
                .file_sink_with(&tiny_dir.join("cam.mkv"), "segment_s: 1, max_bytes: 1"),
        ],
    );
    let engine = Engine::start(&config, &no_models).unwrap();
    let (kept, tiny) = (
        engine.pipeline("kept").unwrap(),
        engine.pipeline("tiny").unwrap(),
    );
    wait_until("5 s of frames", Duration::from_secs(60), || {
        kept.stats.frames_out() >= 150 && tiny.stats.frames_out() >= 150
    });
    let metrics = visiond::control::metrics::render(&engine.view().current());
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    assert!(
        reports.iter().all(|r| r.state == PipelineState::Finished),
        "{reports:?}"
    );

    // Within the budget: the old and the big segment went, oldest first; the rest stayed, and
    // the numbering went on after them.
    assert!(!too_old.exists() && !too_big.exists());
    assert!(fits.exists());
    assert_eq!(kept.stats.segments_deleted(), 2);
    let found = segments(&kept_dir, "cam");
    assert_eq!(found[0].0, fits);
    let new: Vec<_> = found[1..].to_vec();
    assert!(new.len() >= 3, "{found:?}");
    for (i, segment) in new.iter().enumerate() {
        assert_eq!(segment.2, 3 + i as u32, "{found:?}");
        assert!(
            wall_between(now, segment.1) > -2.0
                && wall_between(segment.1, SystemTime::now()) > -1.0,
            "{found:?}"
        );
    }
    assert!(new.windows(2).all(|w| w[0].1 <= w[1].1), "{found:?}");
    for (path, _, _) in &new {
        check_timestamps(path, &packets(path));
    }

    // A budget smaller than a segment: only the newest two are left (the one being written
    // is never deleted, nor the one just closed while it is finished), and they play.
    let left = segments(&tiny_dir, "cam");
    assert!((1..=2).contains(&left.len()), "{left:?}");
    let written = u64::from(left.last().unwrap().2) + 1;
    assert_eq!(tiny.stats.segments_deleted(), written - left.len() as u64);
    assert!(written >= 4, "{left:?}");
    for (path, _, _) in &left {
        check_timestamps(path, &packets(path));
    }
    for (pipeline, deleted) in [("kept", 2), ("tiny", written - left.len() as u64)] {
        let line = format!("visiond_recording_segments_deleted_total{{pipeline=\"{pipeline}\"}} ");
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in {metrics}"));
        // Counted when the metrics were read, a little before the end ("kept" deleted its
        // two when its first segment started).
        let value: u64 = value.parse().unwrap();
        assert!(
            value <= deleted && (pipeline == "tiny" || value == deleted),
            "{value}"
        );
    }
}
