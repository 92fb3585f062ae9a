//! A real KServe v2 (Open Inference Protocol) server for the `remote` model tests: MLServer
//! 1.7.1 from the venv scripts/setup makes, serving fixture checkpoints through transformers
//! with the custom runtime in tools/mlserver/visiond_runtime.py, on loopback ports of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// How long MLServer may take to start (torch and transformers imports on a loaded box).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// One model the server serves, and the metadata it announces for it.
#[derive(Clone, Debug)]
pub struct Served {
    pub name: String,
    /// A folder under tests/fixtures/models.
    pub fixture: String,
    /// `float` or `uint8` (the runtime normalises uint8 itself).
    pub input: String,
    pub input_datatype: String,
    pub input_shape: Vec<i64>,
    pub output_name: String,
    pub output_shape: Vec<i64>,
    /// Every `delay_every`-th request (by id) waits this long before it is answered.
    pub delay_ms: u64,
    pub delay_every: u64,
}

impl Served {
    /// The depth fixture `dpt-vit` (64x64 input), FP32 in and out.
    pub fn depth(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            fixture: "dpt-vit".to_owned(),
            input: "float".to_owned(),
            input_datatype: "FP32".to_owned(),
            input_shape: vec![-1, 3, 64, 64],
            output_name: "predicted_depth".to_owned(),
            output_shape: vec![-1, 64, 64],
            delay_ms: 0,
            delay_every: 1,
        }
    }

    pub fn input(mut self, input: &str, datatype: &str) -> Self {
        self.input = input.to_owned();
        self.input_datatype = datatype.to_owned();
        self
    }

    pub fn input_shape(mut self, shape: &[i64]) -> Self {
        self.input_shape = shape.to_vec();
        self
    }

    pub fn delay(mut self, delay_ms: u64, every: u64) -> Self {
        self.delay_ms = delay_ms;
        self.delay_every = every;
        self
    }

    fn settings(&self) -> serde_json::Value {
        let fixture = super::fixture(&self.fixture);
        serde_json::json!({
            "name": self.name,
            "implementation": "visiond_runtime.VisionModel",
            "parameters": {
                "uri": fixture.display().to_string(),
                "version": "1",
                "extra": {"input": self.input, "delay_ms": self.delay_ms, "delay_every": self.delay_every},
            },
            "inputs": [{"name": "pixel_values", "datatype": self.input_datatype, "shape": self.input_shape}],
            "outputs": [{"name": self.output_name, "datatype": "FP32", "shape": self.output_shape}],
        })
    }
}

/// MLServer's venv, as scripts/setup makes it.
pub fn venv() -> PathBuf {
    if let Some(dir) = std::env::var_os("VISIOND_MLSERVER_VENV") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    cache.join("visiond/mlserver-1.7.1")
}

/// A running MLServer; killed when dropped.
pub struct MlServer {
    repository: tempfile::TempDir,
    pub grpc_port: u16,
    http_port: u16,
    child: Option<Child>,
    starts: usize,
}

impl MlServer {
    /// Starts MLServer serving `models` and waits until its gRPC endpoint answers.
    pub fn start(models: &[Served]) -> Self {
        let bin = venv().join("bin/mlserver");
        assert!(
            bin.is_file(),
            "{} is missing: run scripts/setup (make test does) to create MLServer's venv",
            bin.display()
        );
        let repository = tempfile::tempdir().unwrap();
        for model in models {
            let dir = repository.path().join(&model.name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(
                dir.join("model-settings.json"),
                model.settings().to_string(),
            )
            .unwrap();
        }
        let mut server = Self {
            repository,
            grpc_port: free_port(),
            http_port: free_port(),
            child: None,
            starts: 0,
        };
        server.launch();
        server
    }

    pub fn url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.grpc_port)
    }

    fn log_path(&self) -> PathBuf {
        self.repository
            .path()
            .join(format!("mlserver-{}.log", self.starts))
    }

    fn launch(&mut self) {
        let settings = serde_json::json!({
            "debug": false,
            "host": "127.0.0.1",
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_endpoint": null,
            "parallel_workers": 0,
            "load_models_at_startup": true,
        });
        let root = self.repository.path();
        std::fs::write(root.join("settings.json"), settings.to_string()).unwrap();
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let runtime = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/mlserver");
        let child = Command::new(venv().join("bin/mlserver"))
            .arg("start")
            .arg(root)
            .current_dir(root)
            .env("PYTHONPATH", runtime)
            .env("PYTHONUNBUFFERED", "1")
            .env("HF_HUB_OFFLINE", "1")
            // One thread for torch: the box has two cores and visiond's tests share them.
            .env("OMP_NUM_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if text.contains("gRPC server running") {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("MLServer exited ({status}) while starting:\n{text}");
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "MLServer did not start within {START_TIMEOUT:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: the server vanishes mid-request, as a crashed one does.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// What the server logged in its current run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        self.kill();
    }
}
