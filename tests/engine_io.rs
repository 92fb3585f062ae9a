//! More of the engine's inputs and outputs: file sources (and looping them), rate caps and
//! downscaling, UDP/RTP out, segmented recordings, a pipeline that fails while another runs,
//! and SIGTERM draining a running daemon.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use visiond::pipeline::engine::Engine;
use visiond::pipeline::stats::PipelineState;

use common::*;

/// Records `frames` test frames into an mp4 through the engine itself.
fn record(dir: &Path, frames: u32) -> PathBuf {
    let video = dir.join("recorded.mp4");
    let config = load_tree(
        &dir.join("recorder"),
        "",
        &[Pipeline::new("rec")
            .source(Source::test(96, 64).fps(30).frames(frames.into()))
            .model("none")
            .file_sink(&video)],
    );
    let reports = Engine::start(&config, &no_models).unwrap().wait();
    assert_eq!(reports[0].frames_out, u64::from(frames));
    video
}

#[test]
fn a_file_source_plays_to_its_end_and_the_pipeline_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let video = record(dir.path(), 40);
    let meta = dir.path().join("replay.jsonl");
    let config = load_tree(
        &dir.path().join("replay"),
        "",
        &[Pipeline::new("replay")
            .source(Source::file(&video))
            .model("none")
            .jsonl(&meta)],
    );
    let reports = Engine::start(&config, &no_models).unwrap().wait();
    assert_eq!(reports[0].state, PipelineState::Finished);
    // A file is finite: it defaults to `block`, so every frame is kept.
    assert_eq!((reports[0].frames_out, reports[0].dropped), (40, 0));
    let lines = jsonl(&meta);
    assert_eq!(lines.len(), 40);
    assert_eq!(
        (lines[0]["width"].as_u64(), lines[0]["height"].as_u64()),
        (Some(96), Some(64))
    );
}

#[test]
fn a_looping_file_source_starts_again_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let video = record(dir.path(), 10);
    let meta = dir.path().join("loop.jsonl");
    let config = load_tree(
        &dir.path().join("loop"),
        "",
        &[Pipeline::new("loop")
            .source(Source::file(&video).looping())
            .model("none")
            .queue("{ when_full: block }")
            .jsonl(&meta)],
    );
    let engine = Engine::start(&config, &no_models).unwrap();
    let handle = engine.pipeline("loop").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while handle.stats.frames_out() < 35 {
        assert!(Instant::now() < deadline, "the file did not loop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(handle.stats.state(), PipelineState::Playing);
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    assert_eq!(reports[0].state, PipelineState::Finished);
    let pts: Vec<u64> = jsonl(&meta)
        .iter()
        .map(|l| l["pts_ns"].as_u64().unwrap())
        .collect();
    assert!(
        pts.windows(2).all(|w| w[0] < w[1]),
        "timestamps must keep increasing across loops: {pts:?}"
    );
}

#[test]
fn the_rate_cap_and_max_size_apply_before_the_frames_reach_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("capped.jsonl");
    let config = load_tree(
        dir.path(),
        "",
        &[Pipeline::new("capped")
            .source(
                Source::test(320, 240)
                    .fps(30)
                    .frames(60)
                    .max_fps(10)
                    .max_size(160),
            )
            .model("none")
            .jsonl(&meta)],
    );
    let reports = Engine::start(&config, &no_models).unwrap().wait();
    // Two seconds of video at 10 fps: 20 frames, none of them dropped by visiond.
    assert!((19..=21).contains(&reports[0].frames_in), "{}", reports[0]);
    assert_eq!(reports[0].dropped, 0);
    for line in jsonl(&meta) {
        assert_eq!(
            (line["width"].as_u64(), line["height"].as_u64()),
            (Some(160), Some(120))
        );
    }
}

#[test]
fn rtp_over_udp_reaches_a_receiver() {
    gst::init().unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (receiver, sink) = play(&format!(
        "udpsrc address=127.0.0.1 port={port} caps=\"application/x-rtp,media=video,encoding-name=H264,payload=96,clock-rate=90000\" \
         ! rtpjitterbuffer latency=0 ! rtph264depay ! avdec_h264 ! appsink name=sink sync=false"
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = load_tree(
        dir.path(),
        "",
        &[Pipeline::new("rtp")
            .source(Source::test(96, 64).fps(30))
            .model("none")
            .encoder("{ keyframe_interval: 5 }")
            .udp_sink("127.0.0.1", port)],
    );
    let engine = Engine::start(&config, &no_models).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut frames = 0;
    while frames < 10 && Instant::now() < deadline {
        if let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(200)) {
            let s = sample.caps().unwrap().structure(0).unwrap().to_owned();
            assert_eq!(
                (
                    s.get::<i32>("width").unwrap(),
                    s.get::<i32>("height").unwrap()
                ),
                (96, 64)
            );
            frames += 1;
        }
    }
    receiver.set_state(gst::State::Null).unwrap();
    engine.shutdown_handle().trigger();
    engine.wait();
    assert_eq!(frames, 10, "the receiver decoded too few frames");
}

#[test]
fn segmented_recordings_split_by_duration_and_each_part_plays() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec");
    std::fs::create_dir(&out).unwrap();
    let config = load_tree(
        dir.path(),
        "",
        &[Pipeline::new("seg")
            .source(Source::test(96, 64).fps(30).frames(75))
            .model("none")
            .encoder("{ keyframe_interval: 15 }")
            .file_sink_with(&out.join("seg.mkv"), "segment_s: 1")],
    );
    let reports = Engine::start(&config, &no_models).unwrap().wait();
    assert_eq!(reports[0].frames_out, 75);
    let mut parts: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    parts.sort();
    let names: Vec<String> = parts
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(parts.len() >= 3, "2.5 s in 1 s segments: {names:?}");
    // `seg-<start time, YYYYMMDDTHHMMSSZ>-00000.mkv`.
    let first = &names[0];
    assert!(
        first.starts_with("seg-") && first.ends_with("-00000.mkv") && first.len() == 30,
        "{names:?}"
    );
    let total: usize = parts
        .iter()
        .map(|p| decode_h264(p, "matroskademux").frames)
        .sum();
    assert_eq!(total, 75, "{names:?}");
}

#[test]
fn a_pipeline_that_fails_leaves_the_others_running() {
    let dir = tempfile::tempdir().unwrap();
    let not_media = dir.path().join("notes.mp4");
    std::fs::write(&not_media, "these are not video frames").unwrap();
    let meta = dir.path().join("good.jsonl");
    let config = load_tree(
        dir.path(),
        "",
        &[
            Pipeline::new("broken")
                .source(Source::file(&not_media))
                .model("none")
                .jsonl_stdout(),
            Pipeline::new("good")
                .source(Source::test(64, 48).frames(30))
                .model("none")
                .jsonl(&meta),
        ],
    );
    let reports = Engine::start(&config, &no_models).unwrap().wait();
    let broken = reports.iter().find(|r| r.name == "broken").unwrap();
    let PipelineState::Failed { error } = &broken.state else {
        panic!("broken pipeline ended {:?}", broken.state);
    };
    // The element path and GStreamer's own debug string, for the person reading the log.
    assert!(error.contains("/GstPipeline:"), "{error}");
    assert!(error.contains("(debug: "), "{error}");
    let good = reports.iter().find(|r| r.name == "good").unwrap();
    assert_eq!(
        (&good.state, good.frames_out),
        (&PipelineState::Finished, 30)
    );
    assert_eq!(jsonl(&meta).len(), 30);
}

#[test]
fn sigterm_drains_a_live_pipeline_and_finalizes_its_recording() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("live.mp4");
    let file = write_tree(
        dir.path(),
        "",
        &[Pipeline::new("live")
            .source(Source::test(96, 64).fps(30))
            .model("none")
            .file_sink(&video)],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    daemon.field("source playing", "pipeline", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1000));
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("live: finished"), "{stderr}");
    // The mp4 was finalized (its index written): it demuxes and decodes, and holds every
    // frame the summary says was written.
    let written: usize = stderr
        .split("live: finished; frames in ")
        .nth(1)
        .and_then(|rest| rest.split(", out ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in {stderr}"));
    assert!(written > 0, "{stderr}");
    assert_eq!(decode_h264(&video, "qtdemux").frames, written);
}

/// Plays `url` and returns how many frames arrived, or the error GStreamer reported.
fn rtsp_frames(url: &str, credentials: Option<(&str, &str)>, want: usize) -> Result<usize, String> {
    let auth = credentials
        .map(|(user, password)| format!(" user-id={user} user-pw={password}"))
        .unwrap_or_default();
    let (pipeline, sink) = play(&format!(
        "rtspsrc location={url} protocols=tcp latency=0{auth} ! rtph264depay ! avdec_h264 ! appsink name=sink sync=false"
    ));
    let bus = pipeline.bus().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut frames = 0;
    let result = loop {
        if let Some(message) = bus.pop_filtered(&[gst::MessageType::Error])
            && let gst::MessageView::Error(error) = message.view()
        {
            break Err(error.error().to_string());
        }
        if frames >= want || Instant::now() > deadline {
            break Ok(frames);
        }
        if sink
            .try_pull_sample(gst::ClockTime::from_mseconds(100))
            .is_some()
        {
            frames += 1;
        }
    };
    pipeline.set_state(gst::State::Null).unwrap();
    result
}

#[test]
fn rtsp_basic_auth_admits_only_the_configured_viewer() {
    gst::init().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pipelines")).unwrap();
    let file = dir.path().join("visiond.yaml");
    std::fs::write(
        &file,
        "pipelines_dir: pipelines\nhttp: { listen: \"127.0.0.1:0\" }\nrtsp: { port: 0, auth: { username: viewer, password_env: VISIOND_TEST_RTSP_PASSWORD } }\n",
    )
    .unwrap();
    let cam = Pipeline::new("cam")
        .source(Source::test(96, 64).fps(30))
        .model("none")
        .encoder("{ keyframe_interval: 5 }")
        .rtsp_sink("/cam");
    std::fs::write(dir.path().join("pipelines/cam.yaml"), cam.yaml()).unwrap();
    // The password reaches the daemon only through its environment, as on a real box.
    let mut daemon = Daemon::spawn(&file, &[("VISIOND_TEST_RTSP_PASSWORD", "s3cret-pw")]);
    let port: u16 = daemon
        .field("RTSP server listening", "port", Duration::from_secs(20))
        .parse()
        .expect("the daemon logs its RTSP port");
    let url = format!("rtsp://127.0.0.1:{port}/cam");
    assert!(
        rtsp_frames(&url, None, 3).is_err(),
        "a client without credentials was admitted"
    );
    assert!(
        rtsp_frames(&url, Some(("viewer", "wrong")), 3).is_err(),
        "a wrong password was admitted"
    );
    assert_eq!(rtsp_frames(&url, Some(("viewer", "s3cret-pw")), 5), Ok(5));
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("s3cret-pw"), "the password reached the log");
}

#[test]
fn a_slow_live_output_drops_raw_frames_before_the_encoder_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("slow.jsonl");
    // A sink that takes 100 ms per frame, fed at 30 fps: its branch fills and pushes back.
    let config = load_tree(
        dir.path(),
        "",
        &[Pipeline::new("slow")
            .source(Source::test(64, 48).fps(30))
            .model("none")
            .launch_sink("identity sleep-time=100000 ! fakesink sync=false")
            .jsonl(&meta)],
    );
    let engine = Engine::start(&config, &no_models).unwrap();
    let slow = engine.pipeline("slow").unwrap();
    wait_until("output drops", Duration::from_secs(30), || {
        slow.output_drops.get() > 0
    });
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    let report = &reports[0];
    assert_eq!(report.state, PipelineState::Finished);
    let lines = jsonl(&meta);
    let output_drops: u64 = lines
        .iter()
        .map(|l| l["drops"]["output"].as_u64().unwrap())
        .sum();
    assert!(output_drops > 0, "metadata lines report no output drops");
    // Every frame taken from the source was handed to the outputs or dropped at the first hop;
    // what the encoder's bounded queue then dropped is counted on its own.
    assert_eq!(report.frames_out, lines.len() as u64);
    assert!(report.dropped >= output_drops);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_tree(
        dir.path(),
        "log: { format: json, level: info }\n",
        &[Pipeline::new("short")
            .source(Source::test(32, 32).frames(3))
            .model("none")
            .jsonl_stdout()],
    );
    let output = Command::new(env!("CARGO_BIN_EXE_visiond"))
        .arg("run")
        .arg("-c")
        .arg(&file)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .take_while(|line| !line.starts_with("summary:"))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        logs.iter().any(|l| l["message"] == "source finished"
            && l["pipeline"] == "short"
            && l["level"] == "INFO"),
        "{stderr}"
    );
    // Metadata on stdout stays clean JSON lines, apart from the logs.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
}

#[test]
fn a_failed_output_is_rebuilt_and_earlier_recordings_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec");
    std::fs::create_dir(&out).unwrap();
    // A recording left by an earlier run must survive this one.
    std::fs::write(out.join("cam.mkv"), "an earlier recording").unwrap();
    // The launch sink errors after 15 frames, every time it is built: the output fails, is
    // rebuilt after a second, and fails again.
    let config = load_tree(
        dir.path(),
        "",
        &[Pipeline::new("cam")
            .source(Source::test(64, 48).fps(30))
            .model("none")
            .file_sink(&out.join("cam.mkv"))
            .launch_sink("identity error-after=15 ! fakesink")],
    );
    let engine = Engine::start(&config, &no_models).unwrap();
    let cam = engine.pipeline("cam").unwrap();
    wait_until("two output rebuilds", Duration::from_secs(30), || {
        cam.stats.output_restarts() >= 2
    });
    assert_eq!(
        cam.stats.state(),
        PipelineState::Playing,
        "the source kept running"
    );
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    // Frames were lost while the output was down: counted, and not a clean finish.
    let lost = cam.stats.losses();
    assert!(
        lost.get("output failed").is_some_and(|&n| n > 0),
        "{lost:?}"
    );
    match &reports[0].state {
        PipelineState::Failed { error } => assert!(
            error.contains("lost on the way") && error.contains("output failed"),
            "{error}"
        ),
        other => panic!("a pipeline that lost frames ended {other}"),
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    // The earlier file (moved aside at start), one recording per output life, the current one.
    assert!(files.len() >= 3, "{files:?}");
    let kept: Vec<&PathBuf> = files
        .iter()
        .filter(|p| std::fs::read(p).unwrap() == b"an earlier recording")
        .collect();
    assert_eq!(kept.len(), 1, "the earlier recording was lost: {files:?}");
    let recorded: usize = files
        .iter()
        .filter(|p| !kept.contains(p))
        .map(|p| decode_h264(p, "matroskademux").frames)
        .sum();
    assert!(recorded >= 15, "only {recorded} frames in {files:?}");
}
