//! Sources that stop without saying so, and sources that end again and again: a camera that
//! stops sending but keeps its connection open is seen (`stalled` in the API, `/readyz`,
//! `/metrics` and the log) and reconnected; a source that ends a moment after every start
//! backs off longer each time; and the snapshot of a frameless pipeline cannot be used to tie
//! up the daemon. Real daemons (one of them the camera, stopped with SIGSTOP), real RTSP,
//! real HTTP over loopback.

mod common;

use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use visiond::pipeline::engine::Engine;
use visiond::pipeline::stats::PipelineState;

use common::*;

/// A GET's status, the named response headers, and the body.
struct Answer {
    status: u16,
    headers: Vec<(String, Option<String>)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn get(url: &str) -> Answer {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let response = match agent.get(url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("GET {url}: {error}"),
    };
    let status = response.status();
    let headers = [
        "retry-after",
        "x-frame-age",
        "last-modified",
        "content-type",
    ]
    .iter()
    .map(|name| (name.to_string(), response.header(name).map(str::to_string)))
    .collect();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

/// The value of the sample `name{labels}` in the daemon's `/metrics`.
fn metric(http: &str, sample: &str) -> f64 {
    let text = String::from_utf8(get(&format!("http://{http}/metrics")).body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{sample} ")))
        .unwrap_or_else(|| panic!("no {sample} in {text}"))
        .parse()
        .unwrap()
}

/// The one pipeline of `/api/pipelines`.
fn pipeline(http: &str) -> serde_json::Value {
    get(&format!("http://{http}/api/pipelines")).json()[0].clone()
}

#[test]
fn a_source_that_ends_at_once_backs_off_longer_each_time_and_a_steady_one_does_not() {
    let out = tempfile::tempdir().unwrap();
    let (_dir, config) = temp_tree(
        "",
        &[
            // Five frames and the end, every time: never a steady session.
            Pipeline::new("short")
                .source(
                    Source::launch(
                        "videotestsrc num-buffers=5 ! capsfilter caps=video/x-raw,width=64,height=48,framerate=30/1",
                    )
                    .reconnect(100, 3200),
                )
                .model("none")
                .jsonl(&out.path().join("short.jsonl")),
            // A second of frames at camera pace and the end: steady, for a 400 ms maximum.
            Pipeline::new("steady")
                .source(
                    Source::launch(
                        "videotestsrc is-live=true num-buffers=30 ! capsfilter caps=video/x-raw,width=64,height=48,framerate=30/1",
                    )
                    .reconnect(100, 400),
                )
                .model("none")
                .jsonl(&out.path().join("steady.jsonl")),
        ],
    );
    let engine = Engine::start(&config, &no_models).unwrap();
    let short = engine.pipeline("short").unwrap();
    let steady = engine.pipeline("steady").unwrap();
    let attempt = |state: PipelineState| match state {
        PipelineState::Reconnecting { attempt, .. } => attempt,
        _ => 0,
    };
    let started = Instant::now();
    let mut first_retry = None;
    let mut steady_attempts = Vec::new();
    // Delays of 100, 200, 400, 800 ms (±20%) before the fifth attempt.
    wait_until(
        "the fifth attempt in a row",
        Duration::from_secs(30),
        || {
            if first_retry.is_none() && short.stats.reconnects() >= 1 {
                first_retry = Some(Instant::now());
            }
            steady_attempts.push(attempt(steady.stats.state()));
            attempt(short.stats.state()) >= 5
        },
    );
    let waited = first_retry.unwrap_or(started).elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "four growing delays took only {waited:?}"
    );
    // The steady source ended about as often, and every time started from the first delay.
    wait_until(
        "the steady source to end twice",
        Duration::from_secs(30),
        || {
            steady_attempts.push(attempt(steady.stats.state()));
            steady.stats.reconnects() >= 2
        },
    );
    assert!(
        steady_attempts.iter().all(|&attempt| attempt <= 1),
        "{steady_attempts:?}"
    );
    engine.shutdown_handle().trigger();
    engine.wait();
}

#[test]
fn a_camera_that_stops_sending_is_stalled_reported_and_reconnected_once_it_sends_again() {
    let dir = tempfile::tempdir().unwrap();
    // The camera: a visiond publishing a test pattern over RTSP, in a process of its own, so
    // that SIGSTOP freezes it with its connections open, as a hung camera does. (Its own
    // source must not count the freeze as a stall.)
    let camera_file = write_tree(
        &dir.path().join("camera"),
        "",
        &[Pipeline::new("cam")
            .source(
                Source::test(160, 120)
                    .fps(15)
                    .option("stall_timeout_ms", "600000"),
            )
            .model("none")
            .encoder("{ keyframe_interval: 15 }")
            .rtsp_sink("/cam")],
    );
    let mut camera = Daemon::spawn(&camera_file, &[]);
    let port = camera.field("RTSP server listening", "port", Duration::from_secs(20));
    camera.field("source playing", "pipeline", Duration::from_secs(20));

    let door_file = write_tree(
        &dir.path().join("door"),
        "",
        &[Pipeline::new("door")
            .source(
                Source::uri(&format!("rtsp://127.0.0.1:{port}/cam"))
                    .option("rtsp", "{ latency_ms: 0 }")
                    .option("stall_timeout_ms", "1000")
                    .reconnect(200, 1000),
            )
            .model("none")
            .rtsp_sink("/door")],
    );
    let mut door = Daemon::spawn(&door_file, &[]);
    let http = door.field(
        "control plane listening",
        "address",
        Duration::from_secs(20),
    );
    wait_until("door frames", Duration::from_secs(30), || {
        let door = pipeline(&http);
        door["state"] == "playing" && door["frames_in"].as_u64().unwrap() > 10
    });
    let snapshot_url = format!("http://{http}/api/pipelines/door/snapshot.jpg");
    let fresh = get(&snapshot_url);
    assert_eq!(
        fresh.status,
        200,
        "{}",
        String::from_utf8_lossy(&fresh.body)
    );
    let fresh_age: f64 = fresh.header("x-frame-age").unwrap().parse().unwrap();
    assert!(
        (0.0..2.0).contains(&fresh_age),
        "a fresh frame {fresh_age} s old"
    );
    let captured = httpdate::parse_http_date(fresh.header("last-modified").unwrap()).unwrap();

    // The camera hangs: its process stops, its TCP connection stays open.
    camera.signal("STOP");
    let stopped = Instant::now();
    let mut stalled = serde_json::Value::Null;
    wait_until("door stalled", Duration::from_secs(20), || {
        stalled = pipeline(&http);
        stalled["state"] == "stalled"
    });
    assert!(stalled["age_s"].as_f64().unwrap() >= 1.0, "{stalled}");
    assert!(stalled["attempt"].as_u64().unwrap() >= 1, "{stalled}");
    assert!(
        stalled["last_frame_age_s"].as_f64().unwrap() >= 1.0,
        "{stalled}"
    );
    let since = humantime::parse_rfc3339(stalled["since"].as_str().unwrap()).unwrap();
    assert!(since >= captured, "{stalled}");
    let line = door.line("source stalled", Duration::from_secs(10));
    assert!(
        line.contains("pipeline=door") && line.contains("silent_ms="),
        "{line}"
    );
    let ready = get(&format!("http://{http}/readyz"));
    assert_eq!(ready.status, 503);
    let ready = ready.json();
    assert_eq!(ready["not_ready"][0]["name"], "door", "{ready}");
    assert_eq!(ready["not_ready"][0]["state"], "stalled", "{ready}");
    assert_eq!(
        metric(
            &http,
            "visiond_pipeline_state{pipeline=\"door\",state=\"stalled\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&http, "visiond_source_outages_total{pipeline=\"door\"}"),
        1.0
    );
    // Its last frame grows older, and the snapshot says how old the picture is.
    let age = "visiond_source_last_frame_age_seconds{pipeline=\"door\"}";
    let before = metric(&http, age);
    std::thread::sleep(Duration::from_millis(1500));
    let after = metric(&http, age);
    assert!(
        before >= 1.0 && after >= before + 1.0,
        "{before} then {after}"
    );
    let stale = get(&snapshot_url);
    assert_eq!(
        stale.status,
        200,
        "{}",
        String::from_utf8_lossy(&stale.body)
    );
    let stale_age: f64 = stale.header("x-frame-age").unwrap().parse().unwrap();
    assert!(stale_age >= 1.0, "the stalled picture is {stale_age} s old");
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "the camera was meant to stay stopped a short while"
    );

    // The camera comes back: the door plays again, one outage in all.
    camera.signal("CONT");
    let frames = pipeline(&http)["frames_in"].as_u64().unwrap();
    wait_until("door frames again", Duration::from_secs(40), || {
        let door = pipeline(&http);
        door["state"] == "playing" && door["frames_in"].as_u64().unwrap() > frames + 10
    });
    assert_eq!(get(&format!("http://{http}/readyz")).status, 200);
    assert_eq!(
        metric(&http, "visiond_source_outages_total{pipeline=\"door\"}"),
        1.0
    );
    assert!(metric(&http, age) < before, "the gauge did not come down");
    let attempts = metric(&http, "visiond_reconnect_attempts_total{pipeline=\"door\"}");
    let (code, log) = door.terminate();
    assert_eq!(code, Some(0), "{log}");
    // One line per reconnect attempt, whatever ended it: a stall is logged once, not at
    // every look.
    let lines = |message: &str| {
        log.lines()
            .filter(|l| l.contains(message) && l.contains("pipeline=door"))
            .count() as f64
    };
    let stalls = lines("source stalled");
    assert!(stalls >= 1.0, "{log}");
    assert_eq!(stalls + lines("source lost"), attempts, "{log}");
    let (code, log) = camera.terminate();
    assert_eq!(code, Some(0), "{log}");
}

/// The daemon's threads, from `/proc`.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[test]
fn a_flood_of_snapshot_requests_for_a_frameless_pipeline_is_answered_and_ties_up_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_tree(
        dir.path(),
        "",
        &[Pipeline::new("door")
            .source(Source::uri("rtsp://127.0.0.1:1/nothing").reconnect(1000, 1000))
            .model("none")
            .rtsp_sink("/door")],
    );
    let mut daemon = Daemon::spawn(&file, &[]);
    let http = daemon.field(
        "control plane listening",
        "address",
        Duration::from_secs(20),
    );
    // Its threads once the pipeline runs (its output, the RTSP server, the camera's
    // attempts come and go): the most seen over a second.
    daemon.line("source lost", Duration::from_secs(20));
    let pid = daemon.pid();
    let mut idle = 0;
    for _ in 0..20 {
        idle = idle.max(threads(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://{http}/api/pipelines/door/snapshot.jpg");
    const REQUESTS: usize = 300;
    let barrier = Arc::new(Barrier::new(REQUESTS + 1));
    let clients: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let started = Instant::now();
                let answer = get(&url);
                (answer, started.elapsed())
            })
        })
        .collect();
    barrier.wait();
    let flood = Instant::now();
    // While it lasts, the daemon answers at once and holds no thread per request.
    let mut busiest = idle;
    let mut slowest_health = Duration::ZERO;
    while flood.elapsed() < Duration::from_millis(2500) {
        busiest = busiest.max(threads(pid));
        let asked = Instant::now();
        assert_eq!(get(&format!("http://{http}/healthz")).status, 200);
        slowest_health = slowest_health.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    let answers: Vec<(Answer, Duration)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    // Before snapshots were bounded, each request held a blocking thread: +300.
    assert!(
        busiest <= idle + 30,
        "{busiest} threads during the flood, {idle} before"
    );
    assert!(
        slowest_health < Duration::from_secs(2),
        "/healthz took {slowest_health:?}"
    );
    for (answer, took) in &answers {
        assert_eq!(
            answer.status,
            503,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert!(*took < Duration::from_secs(10), "a request took {took:?}");
    }
    let refused = answers
        .iter()
        .filter(|(a, _)| String::from_utf8_lossy(&a.body).contains("too many"))
        .count();
    assert!(refused > 0, "no request was refused");
    assert_eq!(
        metric(&http, "visiond_snapshots_refused_total{pipeline=\"door\"}"),
        refused as f64
    );
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(1), "the camera never connected:\n{log}");
}

#[test]
fn a_stall_timeout_below_100_ms_is_refused_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_tree(
        dir.path(),
        "",
        &[Pipeline::new("cam")
            .source(Source::test(64, 48).option("stall_timeout_ms", "10"))
            .model("none")
            .rtsp_sink("/cam")],
    );
    let output = Command::new(env!("CARGO_BIN_EXE_visiond"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cam.yaml: source.stall_timeout_ms: must be at least 100"),
        "{stderr}"
    );
}
