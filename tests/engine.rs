//! The streaming engine end to end, on real GStreamer pipelines: sources, hops, outputs,
//! the RTSP server and client, reconnects and caps changes. (Model pipelines are covered in
//! `tests/engine_models.rs`.)

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_pbutils as gst_pbutils;
use visiond::pipeline::engine::Engine;
use visiond::pipeline::stats::PipelineState;

use common::*;

/// Duration and size, as GStreamer's discoverer reads the file.
fn discover(path: &Path) -> (Duration, u32, u32) {
    let discoverer = gst_pbutils::Discoverer::new(gst::ClockTime::from_seconds(10)).unwrap();
    let uri = format!("file://{}", path.canonicalize().unwrap().display());
    let info = discoverer.discover_uri(&uri).unwrap();
    let video = info.video_streams();
    let stream = video.first().expect("a video stream");
    (
        Duration::from_nanos(info.duration().unwrap().nseconds()),
        stream.width(),
        stream.height(),
    )
}

#[test]
fn a_finite_source_is_written_whole_with_its_timestamps() {
    let out = tempfile::tempdir().unwrap();
    let video = out.path().join("a.mp4");
    let meta = out.path().join("a.jsonl");
    let (_dir, config) = temp_tree(
        "",
        &[Pipeline::new("a")
            .source(Source::test(160, 120).fps(30).frames(45))
            .model("none")
            .queue("{ capacity: 2 }")
            .file_sink(&video)
            .jsonl(&meta)],
    );
    let engine = Engine::start(&config, &no_models).unwrap();
    let reports = engine.wait();
    assert_eq!(reports[0].state, PipelineState::Finished);
    assert_eq!(
        (
            reports[0].frames_in,
            reports[0].frames_out,
            reports[0].dropped
        ),
        (45, 45, 0)
    );
    let lines = jsonl(&meta);
    assert_eq!(lines.len(), 45);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["pipeline"], "a");
        assert_eq!(line["seq"], i as u64);
        assert_eq!(line["model"], "none");
        // videotestsrc stamps frame i at i/30 s: the output keeps the source's PTS.
        assert_eq!(
            line["pts_ns"],
            gst::ClockTime::SECOND.nseconds() * i as u64 / 30
        );
        assert!(line["latency_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(line["drops"], serde_json::json!({"input": 0, "output": 0}));
    }
    assert_eq!(decode_h264(&video, "qtdemux").frames, 45);
    let (duration, width, height) = discover(&video);
    assert_eq!((width, height), (160, 120));
    assert!(
        (duration.as_secs_f64() - 1.5).abs() < 0.04,
        "duration {duration:?} for 45 frames at 30 fps"
    );
}

/// Receives decoded frames from an RTSP URL in a real GStreamer client.
fn rtsp_client(url: &str) -> (gst::Pipeline, gst_app::AppSink) {
    play(&format!(
        "rtspsrc location={url} protocols=tcp latency=0 ! rtph264depay ! avdec_h264 ! videoconvert ! appsink name=sink sync=false"
    ))
}

fn pull_frames(sink: &gst_app::AppSink, count: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    let mut frames = 0;
    while frames < count && Instant::now() < deadline {
        if sink
            .try_pull_sample(gst::ClockTime::from_mseconds(200))
            .is_some()
        {
            frames += 1;
        }
    }
    frames
}

#[test]
fn rtsp_clients_receive_the_published_stream() {
    let (_dir, config) = temp_tree(
        "",
        &[Pipeline::new("live")
            .source(Source::test(160, 120).fps(30))
            .model("none")
            .encoder("{ keyframe_interval: 10 }")
            .rtsp_sink("/live")],
    );
    let engine = Engine::start(&config, &no_models).unwrap();
    let port = engine.rtsp_port().expect("RTSP server running");
    assert_ne!(port, 0);
    let url = format!("rtsp://127.0.0.1:{port}/live");
    let (first, first_sink) = rtsp_client(&url);
    assert_eq!(pull_frames(&first_sink, 10, Duration::from_secs(20)), 10);
    // A late second client shares the same media and gets a picture too.
    let (second, second_sink) = rtsp_client(&url);
    assert_eq!(pull_frames(&second_sink, 5, Duration::from_secs(20)), 5);
    let sample = second_sink.pull_sample().unwrap();
    let info = gstreamer_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
    assert_eq!((info.width(), info.height()), (160, 120));
    first.set_state(gst::State::Null).unwrap();
    second.set_state(gst::State::Null).unwrap();
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    assert_eq!(reports[0].state, PipelineState::Finished);
    assert!(reports[0].frames_out > 0);
}

#[test]
fn a_lost_rtsp_camera_is_reconnected_while_other_pipelines_run_on() {
    let camera = Camera::start(0);
    let port = camera.port();
    let out = tempfile::tempdir().unwrap();
    let (_dir, config) = temp_tree(
        "",
        &[
            Pipeline::new("door")
                .source(
                    Source::uri(&format!("rtsp://127.0.0.1:{port}/cam"))
                        .option("rtsp", "{ latency_ms: 0 }")
                        .reconnect(200, 1000),
                )
                .model("none")
                .jsonl(&out.path().join("door.jsonl")),
            Pipeline::new("pattern")
                .source(Source::test(64, 48).fps(30))
                .model("none")
                .jsonl(&out.path().join("pattern.jsonl")),
        ],
    );
    let engine = Engine::start(&config, &no_models).unwrap();
    let door = engine.pipeline("door").unwrap();
    let pattern = engine.pipeline("pattern").unwrap();
    wait_until("door frames", Duration::from_secs(20), || {
        door.stats.frames_out() >= 10
    });
    assert_eq!(door.stats.state(), PipelineState::Playing);

    camera.stop();
    wait_until("door reconnecting", Duration::from_secs(20), || {
        matches!(door.stats.state(), PipelineState::Reconnecting { .. })
    });
    // The other pipeline never notices.
    let before = pattern.stats.frames_out();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        pattern.stats.frames_out() > before + 5,
        "the other pipeline stalled"
    );
    assert_eq!(pattern.stats.state(), PipelineState::Playing);
    let door_frames = door.stats.frames_out();

    // The camera comes back on the same port: frames flow again.
    let camera = Camera::start(port);
    wait_until(
        "door frames after the camera came back",
        Duration::from_secs(30),
        || door.stats.frames_out() >= door_frames + 10,
    );
    assert_eq!(door.stats.state(), PipelineState::Playing);
    // One outage, however many attempts it took to end it.
    assert_eq!(door.stats.outages(), 1);
    assert!(door.stats.reconnects() >= 1);
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    camera.stop();
    assert!(
        reports.iter().all(|r| r.state == PipelineState::Finished),
        "{reports:?}"
    );
    let lines = jsonl(&out.path().join("door.jsonl"));
    // Sequence numbers continue across the reconnect, and every frame taken from the source
    // is either written or counted as dropped (a live source drops the oldest when full).
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let dropped: u64 = lines
        .iter()
        .map(|l| l["drops"]["input"].as_u64().unwrap())
        .sum();
    let door = reports.iter().find(|r| r.name == "door").unwrap();
    assert_eq!(door.frames_out, lines.len() as u64);
    assert_eq!(door.frames_in, door.frames_out + door.dropped);
    assert!(dropped <= door.dropped);
}

#[test]
fn a_resolution_change_mid_stream_keeps_the_output_size() {
    let out = tempfile::tempdir().unwrap();
    let video: PathBuf = out.path().join("switch.mp4");
    let meta = out.path().join("switch.jsonl");
    // Two segments of different sizes, one after the other, as a camera renegotiating.
    let launch = "videotestsrc num-buffers=30 ! video/x-raw,width=160,height=120,framerate=30/1 ! c. \
                  videotestsrc num-buffers=30 pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! c. \
                  concat name=c";
    let (_dir, config) = temp_tree(
        "",
        &[Pipeline::new("switch")
            .source(Source::launch(launch).reconnect(60000, 60000))
            .model("none")
            .queue("{ capacity: 4, when_full: block }")
            .file_sink(&video)
            .jsonl(&meta)],
    );
    let engine = Engine::start(&config, &no_models).unwrap();
    let handle = engine.pipeline("switch").unwrap();
    wait_until("60 frames", Duration::from_secs(30), || {
        handle.stats.frames_out() >= 60
    });
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    assert_eq!(reports[0].frames_out, 60);
    let lines = jsonl(&meta);
    let sizes: Vec<(u64, u64)> = lines
        .iter()
        .map(|l| (l["width"].as_u64().unwrap(), l["height"].as_u64().unwrap()))
        .collect();
    assert_eq!(sizes[..30], [(160, 120); 30]);
    assert_eq!(sizes[30..], [(320, 240); 30]);
    let pts: Vec<u64> = lines
        .iter()
        .map(|l| l["pts_ns"].as_u64().unwrap())
        .collect();
    assert!(
        pts.windows(2).all(|w| w[0] < w[1]),
        "PTS not increasing: {pts:?}"
    );
    // The recording keeps its first size throughout, and holds every frame.
    assert_eq!(decode_h264(&video, "qtdemux").frames, 60);
    let (_, width, height) = discover(&video);
    assert_eq!((width, height), (160, 120));
}

#[test]
fn a_shutdown_while_sources_are_still_starting_drains_promptly() {
    // Shutdown right after start reaches a source mid state change (its first frame
    // prerolling): draining must wait for that to settle, not deadlock GStreamer.
    let out = tempfile::tempdir().unwrap();
    let (_dir, config) = temp_tree(
        "",
        &[Pipeline::new("live")
            .source(Source::test(64, 48).fps(30))
            .model("none")
            .jsonl(&out.path().join("live.jsonl"))],
    );
    // The window is a few milliseconds wide, somewhere after the start: sweep across it.
    for round in 0..40 {
        let engine = Engine::start(&config, &no_models).unwrap();
        std::thread::sleep(Duration::from_micros(round * 500));
        engine.shutdown_handle().trigger();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(engine.wait());
        });
        let reports = done_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("round {round}: the drain hung"));
        assert_eq!(reports[0].state, PipelineState::Finished, "round {round}");
    }
}

#[test]
fn a_finished_pipelines_rate_is_over_its_own_life_not_the_daemons() {
    let out = tempfile::tempdir().unwrap();
    let (_dir, config) = temp_tree(
        "",
        &[
            Pipeline::new("short")
                .source(Source::test(160, 120).fps(30).frames(10))
                .model("none")
                .queue("{ capacity: 2 }")
                .jsonl(&out.path().join("short.jsonl")),
            Pipeline::new("camera")
                .source(Source::test(160, 120).fps(30))
                .model("none")
                .jsonl(&out.path().join("camera.jsonl")),
        ],
    );
    let engine = Engine::start(&config, &no_models).unwrap();
    let short = engine.pipeline("short").unwrap();
    let started = Instant::now();
    while short.stats.state() != PipelineState::Finished {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "short never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The camera runs on for a while after the short stream ended.
    std::thread::sleep(Duration::from_millis(1500));
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    let report = |name: &str| reports.iter().find(|r| r.name == name).unwrap().clone();
    let (short, camera) = (report("short"), report("camera"));
    assert_eq!(short.frames_out, 10);
    assert!(
        short.seconds + 1.2 < camera.seconds,
        "short ran {:.2} s, the camera {:.2} s",
        short.seconds,
        camera.seconds
    );
    assert!((short.fps * short.seconds - 10.0).abs() < 1e-6, "{short:?}");
}
