//! Reliability and compatibility, as a user and a hostile tester found them wanting: clients
//! that are not GStreamer (ffmpeg, ffprobe) decode every frame; recordings survive SIGKILL and
//! a full disk; failing outputs back off for real and report why; resource limits, signals,
//! end states and bad input are handled with clear messages. Every test uses real GStreamer,
//! real files, the built binary where the behaviour is the process's, and a real tmpfs.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use visiond::pipeline::engine::Engine;
use visiond::pipeline::stats::PipelineState;

use common::*;

/// Runs a command and returns (exit code, stdout, stderr).
fn output(command: &mut Command) -> (Option<i32>, String, String) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// libav's decoder reading `mount` over RTP/TCP for `seconds`: (exit code, one CRC line per
/// decoded frame, the decoder's complaints).
fn decode_rtsp(port: &str, mount: &str, seconds: u32) -> (Option<i32>, String, String) {
    output(Command::new("ffmpeg").args([
        "-nostdin",
        "-v",
        "error",
        "-rtsp_transport",
        "tcp",
        "-i",
        &format!("rtsp://127.0.0.1:{port}{mount}"),
        "-t",
        &seconds.to_string(),
        "-f",
        "framecrc",
        "-",
    ]))
}

/// ffprobe's view of a file's first video stream: `codec_name`, `profile`, `pix_fmt` and the
/// frames it could read.
fn probe(path: &Path) -> (String, String, String, usize) {
    let (code, stdout, stderr) = output(Command::new("ffprobe").args([
        "-v",
        "error",
        "-count_frames",
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=codec_name,profile,pix_fmt,nb_read_frames",
        "-of",
        "default=noprint_wrappers=1",
        &path.display().to_string(),
    ]));
    assert!(
        code.is_some(),
        "ffprobe died on {}: {stderr}",
        path.display()
    );
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_string()
    };
    let frames = field("nb_read_frames").parse().unwrap_or(0);
    (
        field("codec_name"),
        field("profile"),
        field("pix_fmt"),
        frames,
    )
}

fn visiond() -> Command {
    Command::new(env!("CARGO_BIN_EXE_visiond"))
}

#[test]
fn ffmpeg_decodes_every_frame_of_the_rtsp_stream_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_tree(
        dir.path(),
        "",
        &[Pipeline::new("cam")
            .source(Source::test(320, 240).fps(30).pattern("ball"))
            .model("none")
            .encoder("{ keyframe_interval: 15 }")
            .rtsp_sink("/cam")],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let port = daemon.field("RTSP server listening", "port", Duration::from_secs(20));
    daemon.field("source playing", "pipeline", Duration::from_secs(20));
    // libav's decoder over RTP/TCP, for 4 s: it reports every concealed or corrupt frame.
    let (code, stdout, stderr) = decode_rtsp(&port, "/cam", 4);
    let (exit, log) = daemon.terminate();
    assert_eq!(exit, Some(0), "{log}");
    assert_eq!(code, Some(0), "ffmpeg failed: {stderr}");
    let frames = stdout.lines().filter(|l| !l.starts_with('#')).count();
    assert!(
        frames >= 60,
        "ffmpeg decoded only {frames} frames: {stderr}"
    );
    for symptom in ["concealing", "corrupt", "error while decoding", "Invalid"] {
        assert!(
            !stderr.contains(symptom),
            "ffmpeg saw '{symptom}' in the stream:\n{stderr}"
        );
    }
}

#[test]
fn recordings_are_4_2_0_h264_that_every_decoder_plays() {
    let dir = tempfile::tempdir().unwrap();
    let default = dir.path().join("default.mp4");
    let nv12 = dir.path().join("nv12.mkv");
    let config = load_tree(
        &dir.path().join("tree"),
        "",
        &[
            Pipeline::new("default")
                .source(Source::test(96, 64).fps(30).frames(20))
                .model("none")
                .file_sink(&default),
            Pipeline::new("nv12")
                .source(Source::test(96, 64).fps(30).frames(20))
                .model("none")
                .encoder("{ element: x264enc, profile: main, format: nv12 }")
                .file_sink(&nv12),
        ],
    );
    let reports = Engine::start(&config, &no_models).unwrap().wait();
    assert!(
        reports.iter().all(|r| r.state == PipelineState::Finished),
        "{reports:?}"
    );
    for path in [&default, &nv12] {
        let (codec, profile, pix_fmt, frames) = probe(path);
        assert_eq!(
            (codec.as_str(), pix_fmt.as_str()),
            ("h264", "yuv420p"),
            "{path:?}"
        );
        assert!(!profile.contains("4:4:4"), "{path:?}: profile {profile}");
        assert_eq!(frames, 20, "{path:?}");
    }
}

#[test]
fn check_names_the_encoder_auto_picks_and_refuses_4_4_4_with_a_4_2_0_profile() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_tree(
        dir.path(),
        "",
        &[Pipeline::new("cam")
            .source(Source::test(64, 48))
            .model("none")
            .rtsp_sink("/cam")],
    );
    let (code, stdout, stderr) = output(visiond().args(["check", "-c"]).arg(&file));
    assert_eq!(code, Some(0), "{stderr}");
    // No NVENC, VA-API or V4L2 encoder on this machine: auto falls back to x264.
    assert!(stdout.contains("cam: encoder x264enc (auto)"), "{stdout}");
    let config = visiond::preflight::load(&file).unwrap();
    let settings = visiond::media::output::OutputSettings::new(
        &config.pipelines[0].config,
        true,
        visiond::config::WhenFull::DropOldest,
        false,
    );
    assert_eq!(settings.encoder.element, "x264enc");

    std::fs::write(
        dir.path().join("pipelines/cam.yaml"),
        Pipeline::new("cam")
            .source(Source::test(64, 48))
            .model("none")
            .encoder("{ profile: main, format: y444 }")
            .rtsp_sink("/cam")
            .yaml(),
    )
    .unwrap();
    let (code, _, stderr) = output(visiond().args(["check", "-c"]).arg(&file));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("encoder.format: y444 needs profile high-4:4:4"),
        "{stderr}"
    );
}

/// The number of JSON lines in `path` (0 when it does not exist yet).
fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_recording_cut_by_sigkill_plays_up_to_its_last_second() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("cam.mp4");
    let meta = dir.path().join("cam.jsonl");
    let file = write_tree(
        &dir.path().join("tree"),
        "",
        &[Pipeline::new("cam")
            .source(Source::test(160, 120).fps(30))
            .model("none")
            .file_sink(&video)
            .jsonl(&meta)],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    daemon.field("source playing", "pipeline", Duration::from_secs(20));
    wait_until("4 s of frames", Duration::from_secs(30), || {
        lines_in(&meta) >= 120
    });
    let published = lines_in(&meta);
    daemon.kill();
    // Everything but the last fragment (1 s) and what was still queued plays.
    let (codec, _, pix_fmt, frames) = probe(&video);
    assert_eq!((codec.as_str(), pix_fmt.as_str()), ("h264", "yuv420p"));
    assert!(
        frames + 60 >= published,
        "{frames} frames play of {published} published before the kill"
    );
}

#[test]
fn a_segmented_recording_cut_by_sigkill_plays_up_to_its_last_second_too() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("cam.jsonl");
    let file = write_tree(
        &dir.path().join("tree"),
        "",
        &[Pipeline::new("cam")
            .source(Source::test(160, 120).fps(30))
            .model("none")
            .encoder("{ keyframe_interval: 15 }")
            .file_sink_with(&dir.path().join("cam.mp4"), "segment_s: 2")
            .jsonl(&meta)],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    daemon.field("source playing", "pipeline", Duration::from_secs(20));
    // Well into the third segment (past its first 1 s fragment), which is open when the
    // daemon dies.
    wait_until("5.8 s of frames", Duration::from_secs(30), || {
        lines_in(&meta) >= 175
    });
    let published = lines_in(&meta);
    daemon.kill();
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mp4"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    let mut frames = 0;
    for segment in &segments {
        let (codec, _, _, count) = probe(segment);
        assert_eq!(codec, "h264", "{}", segment.display());
        frames += count;
    }
    // Every segment plays, the open one too: at most its last fragment and the queue lost.
    let last = probe(segments.last().unwrap()).3;
    assert!(last > 0, "the open segment does not play");
    assert!(
        frames + 60 >= published,
        "{frames} frames play of {published} published before the kill"
    );
}

/// A tmpfs of `size` mounted at `dir`, unmounted on drop; `None` (with the reason printed)
/// where mounting is not allowed.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let (code, _, stderr) = output(Command::new("mount").args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            &dir.display().to_string(),
        ]));
        if code != Some(0) {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root): {stderr}");
            return None;
        }
        Some(Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn get(url: &str) -> serde_json::Value {
    let body = ureq::get(url).call().unwrap().into_string().unwrap();
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

fn recording_health(api: &serde_json::Value) -> serde_json::Value {
    api[0]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["output"].as_str().unwrap().starts_with("file "))
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_full_disk_fails_the_recording_alone_backs_off_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "2m") else {
        return;
    };
    let video = disk.0.join("cam.mp4");
    let meta = dir.path().join("cam.jsonl");
    let file = write_tree(
        &dir.path().join("tree"),
        "outputs: { retry_initial_ms: 200, retry_max_ms: 1600 }\n",
        &[Pipeline::new("cam")
            .source(Source::test(320, 240).fps(30).pattern("snow"))
            .model("none")
            .encoder("{ bitrate_kbps: 4000 }")
            .file_sink(&video)
            .rtsp_sink("/cam")
            .jsonl(&meta)],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let port = daemon.field("RTSP server listening", "port", Duration::from_secs(20));
    let http = daemon.field(
        "control plane listening",
        "address",
        Duration::from_secs(20),
    );
    let api = format!("http://{http}/api/pipelines");
    wait_until("the disk to fill", Duration::from_secs(60), || {
        recording_health(&get(&api))["reason"] == "disk full"
    });
    let full_at = Instant::now();
    // While the recording is down, the stream and the metadata go on.
    let before = lines_in(&meta);
    let (code, stdout, stderr) = decode_rtsp(&port, "/cam", 2);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.lines().filter(|l| !l.starts_with('#')).count() >= 20);
    assert!(
        lines_in(&meta) > before + 30,
        "metadata stopped with the disk"
    );
    // Retries back off (200 ms doubling to 1.6 s), they do not hammer the full disk.
    let mut longest_wait = 0;
    let failures = loop {
        let recording = recording_health(&get(&api));
        longest_wait = longest_wait.max(recording["retry_in_ms"].as_u64().unwrap_or(0));
        if full_at.elapsed() > Duration::from_secs(6) {
            break recording["failures"].as_u64().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!((3..=8).contains(&failures), "{failures} failures in 6 s");
    assert!(
        longest_wait >= 800,
        "waits never grew past {longest_wait} ms"
    );
    let api_now = get(&api);
    assert_eq!(recording_health(&api_now)["state"], "down", "{api_now}");
    let video_health = &api_now[0]["outputs"][0];
    assert_eq!(
        (&video_health["output"], &video_health["state"]),
        (&"video".into(), &"up".into())
    );
    let metrics = ureq::get(&format!("http://{http}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("visiond_output_failures_total{pipeline=\"cam\",reason=\"disk full\"}"),
        "{metrics}"
    );
    let down = format!(
        "visiond_output_up{{pipeline=\"cam\",output=\"file {}\"}} 0",
        video.display()
    );
    assert!(metrics.contains(&down), "{metrics}");

    // Space returns: the recording comes back by itself.
    let full_files: Vec<PathBuf> = files_in(&disk.0);
    assert!(!full_files.is_empty());
    for path in &full_files {
        std::fs::remove_file(path).unwrap();
    }
    wait_until(
        "the recording to come back",
        Duration::from_secs(20),
        || recording_health(&get(&api))["state"] == "up",
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (exit, log) = daemon.terminate();
    // The frames the recording missed while the disk was full are counted, and the pipeline
    // does not end as a clean finish.
    assert_eq!(exit, Some(1), "{log}");
    assert!(log.contains("recording missed"), "{log}");
    // No empty files were left behind, and what is there plays.
    let files = files_in(&disk.0);
    assert!(!files.is_empty(), "{log}");
    for path in files {
        let (_, _, _, frames) = probe(&path);
        assert!(frames > 0, "{path:?} holds no frame");
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn more_pipelines_than_file_descriptors_allow_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let pipelines: Vec<Pipeline> = (0..30)
        .map(|i| {
            Pipeline::new(&format!("p{i}"))
                .source(Source::test(64, 48))
                .model("none")
                .file_sink(&out.join(format!("p{i}.mp4")))
        })
        .collect();
    let file = write_tree(dir.path(), "", &pipelines);
    let started = Instant::now();
    let (code, _, stderr) = output(Command::new("bash").arg("-c").arg(format!(
        "ulimit -n 256 && exec {} run -c {}",
        env!("CARGO_BIN_EXE_visiond"),
        file.display()
    )));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("need about")
            && stderr.contains("file descriptors")
            && stderr.contains("256"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(files_in(&out).is_empty(), "nothing was started");
}

#[test]
fn sigterm_ends_a_stuck_start_within_the_grace_period_and_a_second_signal_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A launch sink writing into a FIFO nobody reads: its open blocks forever.
    let fifo = dir.path().join("fifo");
    assert_eq!(
        Command::new("mkfifo").arg(&fifo).status().unwrap().code(),
        Some(0)
    );
    let stuck = Pipeline::new("stuck")
        .source(Source::test(64, 48))
        .model("none")
        .launch_sink(&format!("filesink location={}", fifo.display()));
    for signals in [1, 2] {
        let tree = dir.path().join(format!("tree{signals}"));
        let file = write_tree(&tree, "", std::slice::from_ref(&stuck));
        std::fs::write(
            &file,
            std::fs::read_to_string(&file)
                .unwrap()
                .replace("grace_ms: 5000", "grace_ms: 1000"),
        )
        .unwrap();
        let mut daemon = Daemon::spawn(&file, &[]);
        daemon.field("starting pipelines", "pipelines", Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let (code, log) = daemon.signal_and_wait(signals);
        let took = started.elapsed();
        if signals == 1 {
            // 1 s of grace plus the 5 s margin, and some slack for a loaded machine.
            assert_eq!(code, Some(1), "{log}");
            assert!(took < Duration::from_secs(9), "took {took:?}:\n{log}");
            assert!(log.contains("did not end within the grace period"), "{log}");
        } else {
            assert_eq!(code, Some(130), "{log}");
            assert!(took < Duration::from_secs(3), "took {took:?}:\n{log}");
        }
    }
}

#[test]
fn repeated_glib_criticals_are_logged_a_few_times_then_counted() {
    visiond::media::registry::init().unwrap();
    let before = visiond::media::glib_log::suppressed();
    for _ in 0..10_000 {
        gstreamer::glib::g_critical!(
            "GStreamer",
            "gst_poll_write_control: assertion 'set != NULL' failed"
        );
    }
    let suppressed = visiond::media::glib_log::suppressed() - before;
    // Logged 5 times in full, then at 10, 100, 1000 and 10000 occurrences.
    assert_eq!(suppressed, 10_000 - 9);
}

#[test]
fn a_camera_that_never_connects_fails_with_its_error_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let file = write_tree(
        dir.path(),
        "",
        &[Pipeline::new("door")
            .source(Source::uri("rtsp://127.0.0.1:1/nothing").reconnect(100, 200))
            .model("none")
            .file_sink(&out.join("door.mp4"))],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let http = daemon.field(
        "control plane listening",
        "address",
        Duration::from_secs(20),
    );
    // One outage, several attempts: the metrics tell them apart.
    let metric = |name: &str| -> f64 {
        let text = ureq::get(&format!("http://{http}/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{pipeline=\"door\"}} ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    };
    wait_until("three reconnect attempts", Duration::from_secs(20), || {
        metric("visiond_reconnect_attempts_total") >= 3.0
    });
    assert_eq!(metric("visiond_source_outages_total"), 1.0);
    assert!(
        metric("visiond_reconnects_total") >= 3.0,
        "the earlier name still works"
    );
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("door: failed: no frame was ever received; last error:"),
        "{log}"
    );
    assert!(files_in(&out).is_empty(), "{:?}", files_in(&out));
}

#[test]
fn random_bytes_are_not_a_video_file_and_leave_no_recording() {
    let dir = tempfile::tempdir().unwrap();
    let noise = dir.path().join("noise.mp4");
    let bytes: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&noise, bytes).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let config = load_tree(
        &dir.path().join("tree"),
        "",
        &[Pipeline::new("replay")
            .source(Source::file(&noise))
            .model("none")
            .file_sink(&out.join("replay.mp4"))],
    );
    let reports = Engine::start(&config, &no_models).unwrap().wait();
    match &reports[0].state {
        PipelineState::Failed { error } => {
            assert!(error.contains("not a video file ("), "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert!(files_in(&out).is_empty(), "{:?}", files_in(&out));
}

#[test]
fn a_truncated_file_is_reported_with_the_frames_read() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.mp4");
    // An mp4 with its index first (as streamed files have it), 300 frames, then cut short.
    let status = Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc", "num-buffers=300", "!"])
        .args([
            "video/x-raw,width=96,height=64,framerate=30/1",
            "!",
            "x264enc",
            "!",
        ])
        .args(["mp4mux", "faststart=true", "!", "filesink"])
        .arg(format!("location={}", whole.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.mp4");
    let mut cut_file = std::fs::File::create(&cut).unwrap();
    cut_file
        .write_all(&bytes[..bytes.len() * 45 / 100])
        .unwrap();
    drop(cut_file);
    let config = load_tree(
        &dir.path().join("tree"),
        "",
        &[Pipeline::new("replay")
            .source(Source::file(&cut))
            .model("none")
            .jsonl(&dir.path().join("replay.jsonl"))],
    );
    let reports = Engine::start(&config, &no_models).unwrap().wait();
    let report = &reports[0];
    assert_eq!(report.state, PipelineState::Finished, "{report:?}");
    assert!(report.frames_in > 0 && report.frames_in < 300, "{report:?}");
    let expected = format!("{} frames were read", report.frames_in);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("input truncated") && n.contains(&expected)),
        "{report:?}"
    );
    assert!(report.to_string().contains("input truncated"), "{report}");
}

#[test]
fn a_taken_rtsp_port_is_reported_as_address_in_use() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let file = write_tree(
        dir.path(),
        "",
        &[Pipeline::new("cam")
            .source(Source::test(64, 48))
            .model("none")
            .rtsp_sink("/cam")],
    );
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("rtsp: { port: 0 }", &format!("rtsp: {{ port: {port} }}")),
    )
    .unwrap();
    let (code, _, stderr) = output(visiond().args(["run", "-c"]).arg(&file));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{port}: address in use")),
        "{stderr}"
    );
}

/// Each video packet's (pts, dts) in seconds as ffprobe reads `url` for `seconds`, and what
/// ffprobe complained about.
fn rtsp_packets(url: &str, seconds: u32) -> (Vec<(f64, f64)>, String) {
    let (_, stdout, stderr) = output(Command::new("ffprobe").args([
        "-v",
        "warning",
        "-rtsp_transport",
        "tcp",
        "-select_streams",
        "v:0",
        "-show_entries",
        "packet=pts_time,dts_time",
        "-of",
        "csv=p=0",
        "-read_intervals",
        &format!("%+{seconds}"),
        url,
    ]));
    let packets = stdout
        .lines()
        .filter_map(|line| {
            let (pts, dts) = line.split_once(',')?;
            Some((pts.parse().ok()?, dts.parse().ok()?))
        })
        .collect();
    (packets, stderr)
}

#[test]
fn rtsp_clients_see_the_cameras_steady_frame_intervals_when_frames_leave_the_model_in_batches() {
    // A 25 fps camera into a model that takes four frames at a time: the output gets them in
    // bursts of four every 160 ms. The stream must still say 40 ms between frames, each
    // decoding time after the last.
    let dir = tempfile::tempdir().unwrap();
    let models = format!(
        "models:\n{}",
        model_yaml(
            "depth",
            "dpt-vit",
            "device: cpu, batch: { max_size: 4, max_wait_ms: 150 }"
        )
    );
    let file = write_tree(
        dir.path(),
        &models,
        &[Pipeline::new("cam")
            .source(Source::test(64, 48).fps(25))
            .model("depth")
            .rtsp_sink("/cam")],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let port = daemon.field("RTSP server listening", "port", Duration::from_secs(20));
    daemon.field("source playing", "pipeline", Duration::from_secs(20));
    let (packets, stderr) = rtsp_packets(&format!("rtsp://127.0.0.1:{port}/cam"), 5);
    let (exit, log) = daemon.terminate();
    assert_eq!(exit, Some(0), "{log}");
    assert!(packets.len() >= 20, "{} packets: {stderr}", packets.len());
    for pair in packets.windows(2) {
        assert!(
            pair[1].1 > pair[0].1,
            "decoding time went back or repeated: {pair:?}"
        );
    }
    // Every gap is the camera's 40 ms, or a whole number of them where a loaded machine
    // dropped frames (live sources drop the oldest): never the bursts the model's batches
    // leave in.
    for pair in packets.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        let frames = (gap / 0.040).round();
        assert!(
            frames >= 1.0 && (gap - frames * 0.040).abs() < 0.005,
            "a gap of {:.1} ms between {pair:?}",
            gap * 1e3
        );
    }
    assert!(!stderr.contains("non monotonically increasing"), "{stderr}");
}

#[test]
fn a_paused_rtsp_client_costs_its_media_no_queue_and_the_mount_serves_the_next_viewer() {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    use std::sync::Arc;
    use visiond::config::RtspServerConfig;
    use visiond::frames::DropCounter;
    use visiond::media::rtsp_server::RtspServer;

    visiond::media::registry::init().unwrap();
    let server = RtspServer::start(&RtspServerConfig {
        address: "127.0.0.1".parse().unwrap(),
        port: 0,
        ..RtspServerConfig::default()
    })
    .unwrap();
    let drops = Arc::new(DropCounter::default());
    let feed = server.mount("/cam", drops.clone()).unwrap();
    // Real H.264 access units, keyframe every 15, as an output's tee hands them over.
    let (encoder, frames) = play(
        "videotestsrc num-buffers=3000 ! video/x-raw,width=64,height=48,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 \
         ! h264parse config-interval=-1 \
         ! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false",
    );
    let next = || {
        frames
            .pull_sample()
            .ok()
            .and_then(|s| s.buffer_owned())
            .unwrap()
    };
    let client = gst::parse::launch(&format!(
        "rtspsrc location=rtsp://127.0.0.1:{}/cam protocols=tcp latency=0 ! fakesink name=sink sync=false",
        server.port()
    ))
    .unwrap();
    client.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while feed.client_count() == 0 && Instant::now() < deadline {
        feed.push(&next());
        std::thread::sleep(Duration::from_millis(33));
    }
    assert_eq!(feed.client_count(), 1, "the client never connected");
    for _ in 0..30 {
        feed.push(&next());
        std::thread::sleep(Duration::from_millis(33));
    }
    // The client pauses (RTSP PAUSE): its media takes nothing from its queue any more.
    client.set_state(gst::State::Paused).unwrap();
    let _ = client.state(gst::ClockTime::from_seconds(5));
    std::thread::sleep(Duration::from_millis(500));
    let before = drops.get();
    for _ in 0..300 {
        feed.push(&next());
    }
    // Nothing is held for a paused media: what it would play later would be stale.
    let deepest = feed.deepest_queue();
    assert!(deepest <= 2, "the paused media holds {deepest} frames");
    assert!(drops.get() >= before);
    // The paused viewer leaves; a new one gets frames (from the next keyframe, on its clock).
    let _ = client.set_state(gst::State::Null);
    let viewer = gst::parse::launch(&format!(
        "rtspsrc location=rtsp://127.0.0.1:{}/cam protocols=tcp latency=0 ! fakesink name=sink sync=false",
        server.port()
    ))
    .unwrap();
    let sink = viewer
        .downcast_ref::<gst::Bin>()
        .and_then(|bin| bin.by_name("sink"))
        .unwrap();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    sink.static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    viewer.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.load(std::sync::atomic::Ordering::Relaxed) < 10 && Instant::now() < deadline {
        feed.push(&next());
        std::thread::sleep(Duration::from_millis(33));
    }
    assert!(
        received.load(std::sync::atomic::Ordering::Relaxed) >= 10,
        "a new viewer got nothing after the paused one left"
    );
    let _ = viewer.set_state(gst::State::Null);
    let _ = encoder.set_state(gst::State::Null);
    server.stop();
}

#[test]
fn a_second_sigint_exits_at_once_and_cleanly_with_a_model_loaded() {
    // Two SIGINTs 50 ms apart while a model runs: the second exits with 130 at once, every
    // time, without a crash or libtorch tearing itself down under its own threads. The sink
    // takes 100 ms a frame and every queue blocks, so the drain the first signal starts lasts
    // seconds, the model working through the queues as the sink frees room: the second signal
    // always comes during it.
    let dir = tempfile::tempdir().unwrap();
    let models = format!("models:\n{}", model_yaml("depth", "dpt-vit", "device: cpu"));
    let file = write_tree(
        dir.path(),
        &models,
        &[Pipeline::new("cam")
            .source(Source::test(64, 48).fps(30))
            .model("depth")
            .queue("{ capacity: 16, when_full: block }")
            .file_sink(&dir.path().join("cam.mp4"))
            .launch_sink("identity sleep-time=100000 ! fakesink")],
    );
    for run in 0..5 {
        let mut daemon = Daemon::spawn(&file, &[]);
        daemon.field("source playing", "pipeline", Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(300 + 100 * run));
        let pid = daemon.pid().to_string();
        let started = Instant::now();
        for i in 0..2 {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                Command::new("kill")
                    .args(["-INT", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let (code, log) = daemon.wait_for_exit(Duration::from_secs(15));
        let took = started.elapsed();
        assert_eq!(code, Some(130), "run {run}: {log}");
        assert!(
            took < Duration::from_secs(3),
            "run {run} took {took:?}:\n{log}"
        );
        for symptom in [
            "terminate called",
            "Exception raised",
            "Assertion",
            "panicked",
            "killed by signal",
        ] {
            assert!(!log.contains(symptom), "run {run}: '{symptom}' in:\n{log}");
        }
    }
}

/// The soft and hard limits on open files of process `pid`.
fn fd_limits(pid: u32) -> (u64, u64) {
    let (_, stdout, stderr) = output(Command::new("prlimit").args([
        "--pid",
        &pid.to_string(),
        "--nofile",
        "--output=SOFT,HARD",
        "--noheadings",
        "--raw",
    ]));
    let mut fields = stdout.split_whitespace().map(|v| v.parse().unwrap_or(0));
    match (fields.next(), fields.next()) {
        (Some(soft), Some(hard)) => (soft, hard),
        _ => panic!("prlimit: {stdout} {stderr}"),
    }
}

/// Sets the soft limit on open files of the running process `pid`, as `prlimit` does.
fn set_fd_limit(pid: u32, soft: u64, hard: u64) {
    let (code, _, stderr) = output(Command::new("prlimit").args([
        "--pid",
        &pid.to_string(),
        &format!("--nofile={soft}:{hard}"),
    ]));
    assert_eq!(code, Some(0), "prlimit: {stderr}");
}

#[test]
fn a_recording_that_ran_out_of_file_descriptors_writes_again_once_they_are_free() {
    // The daemon runs out of file descriptors for a few seconds (its limit lowered under it,
    // as a flood of connections would): the segmented recording cannot open its next segment
    // ("Too many open files"), and its rebuilds meanwhile get pipelines whose bus never
    // wakes. Once descriptors are free again it must be seen for what it is (down, not up),
    // rebuilt, and write again, and the frames it missed counted.
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    std::fs::create_dir(&rec).unwrap();
    let file = write_tree(
        dir.path(),
        "outputs: { retry_initial_ms: 300, retry_max_ms: 1000 }\n",
        &[Pipeline::new("cam")
            .source(Source::test(64, 48).fps(30))
            .model("none")
            .file_sink_with(&rec.join("cam.mkv"), "segment_s: 1")],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let http = daemon.field(
        "control plane listening",
        "address",
        Duration::from_secs(20),
    );
    let segments = || std::fs::read_dir(&rec).unwrap().count();
    wait_until("the first segments", Duration::from_secs(20), || {
        segments() >= 2
    });
    let pid = daemon.pid();
    let (soft, hard) = fd_limits(pid);
    set_fd_limit(pid, 8, hard);
    daemon.line("Too many open files", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    set_fd_limit(pid, soft, hard);
    let after = segments();
    wait_until(
        "new segments once descriptors are free",
        Duration::from_secs(40),
        || segments() >= after + 3,
    );
    let api = get(&format!("http://{http}/api/pipelines"));
    let health = recording_health(&api);
    assert_eq!(health["state"], "up", "{api}");
    assert!(health["failures"].as_u64().unwrap() >= 1, "{api}");
    let missed = api[0]["lost"]["recording missed"].as_u64().unwrap_or(0);
    assert!(
        missed > 0,
        "the frames the recording missed are not counted: {api}"
    );
    // Frames were lost to the recording: not a clean finish.
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("recording missed"), "{log}");
}

/// A counter or gauge's value in Prometheus text, `None` when the sample is absent.
fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
}

#[test]
fn a_flood_of_idle_rtsp_connections_is_bounded_and_recordings_and_viewers_go_on() {
    // 150 TCP connections to the RTSP server that never say a word, under a descriptor limit
    // they would exhaust: the server keeps at most rtsp.max_clients, closes the rest at once
    // and the idle ones after rtsp.setup_timeout_ms, and meanwhile the recording writes, the
    // control plane answers, and a real viewer can watch.
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    std::fs::create_dir(&rec).unwrap();
    let file = write_tree(
        dir.path(),
        "",
        &[Pipeline::new("cam")
            .source(Source::test(64, 48).fps(30))
            .model("none")
            .encoder("{ keyframe_interval: 15 }")
            .file_sink_with(&rec.join("cam.mkv"), "segment_s: 1")
            .rtsp_sink("/cam")],
    );
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace(
            "rtsp: { port: 0 }",
            "rtsp: { address: 127.0.0.1, port: 0, max_clients: 16, setup_timeout_ms: 2000 }",
        )
        .replace(
            "http: { listen: \"127.0.0.1:0\" }",
            "http: { listen: \"127.0.0.1:0\", max_connections: 8 }",
        );
    std::fs::write(&file, text).unwrap();
    let mut daemon = Daemon::spawn_with_fd_limit(&file, 170);
    let port: u16 = daemon
        .field("RTSP server listening", "port", Duration::from_secs(20))
        .parse()
        .unwrap();
    let http = daemon.field(
        "control plane listening",
        "address",
        Duration::from_secs(20),
    );
    let segments = || std::fs::read_dir(&rec).unwrap().count();
    wait_until("the first segments", Duration::from_secs(20), || {
        segments() >= 2
    });
    let flood: Vec<_> = (0..150)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    let scrape = || {
        ureq::get(&format!("http://{http}/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    };
    // Every connection of the flood is closed by the server, at the cap or after the setup
    // timeout, never more than the cap connected at once, and the recording goes on.
    let during = segments();
    wait_until(
        "the flood closed by the server",
        Duration::from_secs(60),
        || {
            let metrics = scrape();
            let clients = metric(&metrics, "visiond_rtsp_clients ").unwrap();
            assert!(clients <= 16.0, "{clients} clients connected:\n{metrics}");
            let closed = |reason: &str| {
                let sample = format!("visiond_rtsp_clients_closed_total{{reason=\"{reason}\"}}");
                metric(&metrics, &sample).unwrap()
            };
            closed("max_clients") + closed("setup_timeout") >= flood.len() as f64
        },
    );
    wait_until("segments during the flood", Duration::from_secs(30), || {
        segments() >= during + 3
    });
    // A viewer gets in, with the flood's sockets still open on its side.
    let (code, stdout, stderr) = decode_rtsp(&port.to_string(), "/cam", 2);
    assert_eq!(code, Some(0), "ffmpeg failed: {stderr}");
    let frames = stdout.lines().filter(|l| !l.starts_with('#')).count();
    assert!(frames >= 20, "{frames} frames: {stderr}");
    drop(flood);
    let (exit, log) = daemon.terminate();
    assert_eq!(exit, Some(0), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
}
