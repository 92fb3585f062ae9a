//! What publishing results costs, and what a broker takes:
//!
//! 1. the frame path's cost per published message: `Sink::offer` (sampling, one copy of the
//!    line, a lock-free push, a wake), with the spool drained by a live MQTT connection and with
//!    it full (broker away: the oldest dropped);
//! 2. how fast one MQTT connection empties a spool, at qos 0 and qos 1;
//! 3. 16 pipelines at 30 fps (test pattern, no model, metadata only), each publishing every
//!    frame at qos 1: messages per second the broker acknowledged, drops, and the frames'
//!    latency, against the same pipelines writing only a jsonl file.
//!
//! Run it with:
//!
//!     cargo bench --bench publish                     # needs mosquitto (scripts/setup)
//!     cargo bench --bench publish -- --seconds 30
//!
//! Not a test: numbers depend on the machine. Under `cargo test --all-targets` (no `--bench`
//! argument) it only smoke-runs the first part, without a broker.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use visiond::config::Config;
use visiond::pipeline::engine::Engine;
use visiond::publish::Publishing;
use visiond::runtime::{LoadError, ModelRuntime};

const LINE: &str = r#"{"pipeline":"door","seq":299,"pts_ns":9966666666,"time":"2026-11-26T07:22:21.783Z","latency_ms":94.3,"model":"classes","width":640,"height":480,"results":{"kind":"classes","top_k":[{"label":"cat","score":0.81},{"label":"dog","score":0.11},{"label":"fox","score":0.02}]},"drops":{"input":0,"output":0}}"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    if smoke {
        // No broker: the connection is down, every push lands in a spool that fills.
        let config = tree(
            dir.path(),
            1,
            1,
            "mqtt://127.0.0.1:1",
            "mqtt: { broker: site }",
        );
        let publishing = Publishing::start(&config);
        offer_cost(&publishing, 1000, "spool full (broker away)");
        return;
    }
    let broker = Mosquitto::start(dir.path());
    let url = format!("mqtt://127.0.0.1:{}", broker.port);

    println!(
        "1. frame-path cost per published message ({} bytes)",
        LINE.len()
    );
    let config = tree(
        dir.path(),
        1,
        1,
        &url,
        "mqtt: { broker: site, qos: 1, buffer: 100000 }",
    );
    let publishing = Publishing::start(&config);
    wait_connected(&publishing);
    offer_cost(&publishing, 100_000, "connected, qos 1, drained meanwhile");
    drop(publishing);
    let config = tree(
        dir.path(),
        1,
        1,
        "mqtt://127.0.0.1:1",
        "mqtt: { broker: site }",
    );
    let publishing = Publishing::start(&config);
    offer_cost(&publishing, 100_000, "spool full (broker away)");
    drop(publishing);

    println!("2. one connection emptying a spool of 50000");
    for qos in [0, 1] {
        let item = format!("mqtt: {{ broker: site, qos: {qos}, buffer: 50000 }}");
        let config = tree(dir.path(), 1, 1, &url, &item);
        let publishing = Publishing::start(&config);
        wait_connected(&publishing);
        drain_rate(&publishing, 50_000, qos);
    }

    println!("3. 16 pipelines at 30 fps for {seconds} s, every frame published at qos 1");
    let with = run_pipelines(
        dir.path(),
        &url,
        seconds,
        Some("mqtt: { broker: site, qos: 1 }"),
    );
    let without = run_pipelines(dir.path(), &url, seconds, None);
    println!("   with MQTT: {with}");
    println!("   jsonl only: {without}");
}

/// A daemon file with broker `site` at `url` and `pipelines` pipelines of `fps` frames a
/// second, each with a jsonl file and `item` under `metadata:`.
fn tree(dir: &Path, pipelines: usize, fps: u32, url: &str, item: &str) -> Config {
    tree_with(dir, pipelines, fps, url, Some(item))
}

fn tree_with(dir: &Path, pipelines: usize, fps: u32, url: &str, item: Option<&str>) -> Config {
    let root = dir.join(format!("tree-{}", fastrand::u32(..)));
    std::fs::create_dir_all(root.join("pipelines")).unwrap();
    std::fs::write(
        root.join("visiond.yaml"),
        format!(
            "pipelines_dir: pipelines\nname: bench\nrtsp: {{ port: 0 }}\nshutdown: {{ grace_ms: 3000 }}\nbrokers:\n  site: {{ mqtt: {{ url: \"{url}\", inflight: 500 }} }}\n"
        ),
    )
    .unwrap();
    for index in 0..pipelines {
        std::fs::write(
            root.join(format!("pipelines/p{index}.yaml")),
            format!(
                "name: p{index}\nsource: {{ test: {{ width: 320, height: 240, fps: {fps} }} }}\nmodel: none\nmetadata:\n  - jsonl: {{ path: p{index}.jsonl }}\n{}",
                item.map(|item| format!("  - {item}\n")).unwrap_or_default()
            ),
        )
        .unwrap();
    }
    visiond::preflight::load(&root.join("visiond.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

fn wait_connected(publishing: &Publishing) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !publishing.outboxes().iter().all(|o| o.is_connected()) {
        assert!(Instant::now() < deadline, "the broker did not connect");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn offer_cost(publishing: &Publishing, count: u32, case: &str) {
    let config = tree_items();
    let mut sinks = publishing.sinks("door", &config).unwrap();
    let sink = sinks[0].as_mut().unwrap();
    let started = Instant::now();
    for _ in 0..count {
        sink.offer(LINE, Some("cat"));
    }
    let elapsed = started.elapsed();
    println!(
        "   {case}: {:.0} ns per message over {count}",
        elapsed.as_nanos() as f64 / f64::from(count)
    );
}

fn tree_items() -> Vec<visiond::config::MetadataConfig> {
    vec![visiond::config::MetadataConfig::Mqtt(
        visiond::config::MqttSink {
            broker: "site".into(),
            topic: "visiond/{pipeline}/results".into(),
            qos: 1,
            retain: false,
            every: 1,
            max_hz: None,
            on_change: false,
            buffer: 100_000,
        },
    )]
}

fn drain_rate(publishing: &Publishing, count: u32, qos: u8) {
    let mut items = tree_items();
    if let visiond::config::MetadataConfig::Mqtt(mqtt) = &mut items[0] {
        mqtt.qos = qos;
    }
    let mut sinks = publishing.sinks("drain", &items).unwrap();
    let sink = sinks[0].as_mut().unwrap();
    let started = Instant::now();
    for _ in 0..count {
        sink.offer(LINE, None);
    }
    let shared = sink.shared().clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.published() < u64::from(count) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "   qos {qos}: {} messages in {elapsed:.2} s: {:.0} messages/s",
        shared.published(),
        shared.published() as f64 / elapsed
    );
}

fn no_models(model: &str) -> Result<ModelRuntime, LoadError> {
    Err(LoadError::Undefined(model.to_string()))
}

/// Runs 16 pipelines at 30 fps for `seconds`; a line of what came out.
fn run_pipelines(dir: &Path, url: &str, seconds: u64, item: Option<&str>) -> String {
    let config = tree_with(dir, 16, 30, url, item);
    let cpu_before = cpu_seconds();
    let engine = Engine::start(&config, &no_models).unwrap();
    std::thread::sleep(Duration::from_secs(seconds));
    let pipelines = engine.pipelines();
    let frames: u64 = pipelines.iter().map(|p| p.stats.frames_out()).sum();
    let published: u64 = pipelines
        .iter()
        .flat_map(|p| p.sinks.iter())
        .map(|s| s.published())
        .sum();
    let dropped: u64 = pipelines
        .iter()
        .flat_map(|p| p.sinks.iter())
        .map(|s| {
            visiond::publish::DropReason::ALL
                .iter()
                .map(|r| s.dropped_for(*r))
                .sum::<u64>()
        })
        .sum();
    let p50: Vec<f64> = pipelines
        .iter()
        .filter_map(|p| p.stats.latency.quantile(0.5))
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    let p99: Vec<f64> = pipelines
        .iter()
        .filter_map(|p| p.stats.latency.quantile(0.99))
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    engine.shutdown_handle().trigger();
    engine.wait();
    let cpu = cpu_seconds() - cpu_before;
    let s = seconds as f64;
    format!(
        "{:.0} frames/s out, {:.0} messages/s acknowledged, {dropped} dropped, latency p50 {:.2} ms, p99 {:.2} ms (worst pipeline), CPU {:.0} % of one core",
        frames as f64 / s,
        published as f64 / s,
        p50.iter().cloned().fold(0.0, f64::max),
        p99.iter().cloned().fold(0.0, f64::max),
        cpu / s * 100.0
    )
}

/// This process's user and system CPU time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

struct Mosquitto {
    child: Child,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (scripts/setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto { child, port }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
