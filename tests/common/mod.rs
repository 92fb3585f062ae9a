//! Helpers shared by the engine tests: configuration trees in temporary folders (pipeline
//! files from the builder in `yaml.rs`), reading metadata and recordings back, a camera
//! stand-in (`camera.rs`), and a real KServe v2 server for served models (`mlserver.rs`).

// Each test binary uses its own subset of these.
#![allow(dead_code)]

pub mod brokers;
pub mod browser;
mod camera;
pub mod mlserver;
mod yaml;

// As above: not every binary uses every one.
#[allow(unused_imports)]
pub use camera::Camera;
#[allow(unused_imports)]
pub use yaml::{Pipeline, Source, model_yaml};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use visiond::config::Config;
use visiond::runtime::{LoadError, ModelRuntime};

/// A free TCP port on loopback (bound and released: the server under test binds it again at
/// once; nothing else here takes ports at random).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The engine's model loader for configs that name no model.
pub fn no_models(model: &str) -> Result<ModelRuntime, LoadError> {
    Err(LoadError::Undefined(model.to_string()))
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

/// Writes a daemon file (`daemon_extra` appended to a base that picks free ports for the RTSP
/// server and the control plane) and one file per pipeline under `dir`; returns the daemon file.
pub fn write_tree(dir: &Path, daemon_extra: &str, pipelines: &[Pipeline]) -> PathBuf {
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    let file = dir.join("visiond.yaml");
    let base = "pipelines_dir: pipelines\nrtsp: { port: 0 }\nhttp: { listen: \"127.0.0.1:0\" }\nshutdown: { grace_ms: 5000 }\n";
    std::fs::write(&file, format!("{base}{daemon_extra}")).unwrap();
    for pipeline in pipelines {
        let name = format!("{}.yaml", pipeline.name());
        std::fs::write(dir.join("pipelines").join(name), pipeline.yaml()).unwrap();
    }
    file
}

/// [`write_tree`] then load (and validate) it.
pub fn load_tree(dir: &Path, daemon_extra: &str, pipelines: &[Pipeline]) -> Config {
    let file = write_tree(dir, daemon_extra, pipelines);
    visiond::preflight::load(&file).unwrap_or_else(|e| panic!("{e}"))
}

/// [`load_tree`] in a new temporary folder, kept alive by the returned guard.
pub fn temp_tree(daemon_extra: &str, pipelines: &[Pipeline]) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let config = load_tree(dir.path(), daemon_extra, pipelines);
    (dir, config)
}

pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Plays a gst-launch description that ends in `appsink name=sink`, and returns both.
pub fn play(description: &str) -> (gst::Pipeline, gst_app::AppSink) {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(description)
        .unwrap_or_else(|e| panic!("{description}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, sink)
}

/// What decoding a recording found.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub frames: usize,
    pub width: i32,
    pub height: i32,
}

/// Demuxes (`qtdemux`, `matroskademux`) and decodes a recording, counting its frames.
pub fn decode(path: &Path, demuxer: &str, decoder: &str) -> Decoded {
    let (pipeline, sink) = play(&format!(
        "filesrc location=\"{}\" ! {demuxer} ! {decoder} ! appsink name=sink sync=false",
        path.display()
    ));
    let mut decoded = Decoded {
        frames: 0,
        width: 0,
        height: 0,
    };
    while let Ok(sample) = sink.pull_sample() {
        let caps = sample.caps().unwrap().structure(0).unwrap().to_owned();
        decoded.width = caps.get::<i32>("width").unwrap();
        decoded.height = caps.get::<i32>("height").unwrap();
        decoded.frames += 1;
    }
    pipeline.set_state(gst::State::Null).unwrap();
    decoded
}

/// An H.264 recording's decoded frames.
pub fn decode_h264(path: &Path, demuxer: &str) -> Decoded {
    decode(path, demuxer, "h264parse ! avdec_h264")
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `visiond run -c FILE` as a child process, its log read line by line, as a box runs it.
pub struct Daemon {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Daemon {
    pub fn spawn(file: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_visiond"));
        command.arg("run").arg("-c").arg(file);
        for (name, value) in env {
            command.env(name, value);
        }
        Self::start(command)
    }

    /// `visiond run -c FILE` allowed at most `limit` file descriptors (soft and hard, as
    /// systemd's `LimitNOFILE=` sets them). `exec` keeps the daemon's process id the child's.
    pub fn spawn_with_fd_limit(file: &Path, limit: u64) -> Self {
        let mut command = std::process::Command::new("bash");
        command
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" run -c \"$1\""))
            .arg(env!("CARGO_BIN_EXE_visiond"))
            .arg(file);
        Self::start(command)
    }

    fn start(mut command: std::process::Command) -> Self {
        use std::io::BufRead;
        command
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The value of `field=` in the first log line containing `message`.
    pub fn field(&mut self, message: &str, field: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!(
                    "no log line with '{message}' within {timeout:?}:\n{}",
                    self.log()
                );
            };
            self.seen.push(line.clone());
            if line.contains(message)
                && let Some(value) = line
                    .split(&format!("{field}="))
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
            {
                return value.to_string();
            }
        }
    }

    /// [`Daemon::field`], looking first in the lines already read (whose order with other
    /// lines may vary).
    pub fn field_read_or_next(&mut self, message: &str, field: &str, timeout: Duration) -> String {
        let found = self.seen.iter().find_map(|line| {
            line.contains(message)
                .then(|| line.split(&format!("{field}=")).nth(1))
                .flatten()
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        });
        found.unwrap_or_else(|| self.field(message, field, timeout))
    }

    fn log(&self) -> String {
        self.seen.join("\n")
    }

    /// The first log line (from now on) containing `message`.
    pub fn line(&mut self, message: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!(
                    "no log line with '{message}' within {timeout:?}:\n{}",
                    self.log()
                );
            };
            self.seen.push(line.clone());
            if line.contains(message) {
                return line;
            }
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal `name` (`HUP`, `TERM`, …) to the daemon.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then waits (at most 15 s) for the exit; returns the exit code and the whole log.
    pub fn terminate(self) -> (Option<i32>, String) {
        self.signal_and_wait(1)
    }

    /// SIGKILL (a power cut, as far as files are concerned), and waits for the process.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `count` SIGTERMs (100 ms apart), then waits (at most 15 s) for the exit; returns the
    /// exit code and the whole log.
    pub fn signal_and_wait(self, count: usize) -> (Option<i32>, String) {
        for i in 0..count {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            self.signal("TERM");
        }
        self.wait_for_exit(Duration::from_secs(15))
    }

    /// Waits (at most `timeout`) for the process to exit; returns its exit code and the whole
    /// log, which ends with `killed by signal N` when a signal ended it.
    pub fn wait_for_exit(mut self, timeout: Duration) -> (Option<i32>, String) {
        use std::os::unix::process::ExitStatusExt;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("visiond did not exit in {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The log thread ends when the child's stderr closes.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        if let Some(signal) = status.signal() {
            self.seen.push(format!("killed by signal {signal}"));
        }
        (status.code(), self.log())
    }
}

impl Drop for Daemon {
    /// A test that fails half-way leaves no daemon behind (holding its ports and files, and
    /// the CPU other tests need).
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
