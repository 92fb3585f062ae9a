//! Real brokers for the publishing tests: Debian's mosquitto (and its own clients, a second
//! MQTT implementation reading what the daemon sends) and tansu, a Kafka-API broker built
//! once into a cache by scripts/setup. Each runs on a free loopback port with its own files.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::free_port;

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn program(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path.display().to_string();
        }
    }
    panic!(
        "{name} is not installed; scripts/setup installs it (Debian package mosquitto / mosquitto-clients)"
    )
}

/// A mosquitto broker on loopback, with its own configuration file in `dir`.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
}

impl Mosquitto {
    /// Starts mosquitto on a free port; `extra` is added to its configuration (TLS files,
    /// a password file). Without a password file anyone may connect.
    pub fn start(dir: &Path, extra: &str) -> Self {
        let port = free_port();
        let config = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        let anonymous = if extra.contains("password_file") {
            "false"
        } else {
            "true"
        };
        // `user root`: run as the test's user, who can read the files in the test's folder
        // (mosquitto started as root otherwise becomes user mosquitto).
        std::fs::write(
            &config,
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous {anonymous}\npersistence false\nlog_dest stderr\nlog_type all\n{extra}\n"
            ),
        )
        .unwrap();
        let mut broker = Mosquitto {
            child: None,
            port,
            config,
            log,
        };
        broker.restart();
        broker
    }

    /// Starts it again on the same port (after [`Mosquitto::kill`]).
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(program("mosquitto"))
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.port, "mosquitto", &self.log);
    }

    /// SIGKILL: the broker vanishes without a word, its sessions and queues with it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message as mosquitto_sub printed it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub retained: bool,
    pub payload: String,
}

/// `mosquitto_sub` on `topic` (qos 1), its messages read line by line.
pub struct Subscriber {
    child: Child,
    lines: mpsc::Receiver<Received>,
    pub received: Vec<Received>,
}

impl Subscriber {
    /// Subscribes to `filter` and returns once the subscription is in place (a marker
    /// published to `visiond-test/ready` came back). `args` are more mosquitto_sub
    /// arguments (TLS files).
    pub fn start(broker: &Mosquitto, filter: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-q", "1", "-t", filter, "-t", "visiond-test/ready"])
            // topic, retained flag, payload; one message per line (payloads are one line).
            .args(["-F", "%t\t%r\t%p"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut parts = line.splitn(3, '\t');
                let (Some(topic), Some(retained), Some(payload)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let received = Received {
                    topic: topic.to_string(),
                    retained: retained == "1",
                    payload: payload.to_string(),
                };
                if tx.send(received).is_err() {
                    break;
                }
            }
        });
        let mut subscriber = Subscriber {
            child,
            lines,
            received: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "mosquitto_sub never subscribed");
            publish(broker, "visiond-test/ready", "ready", args);
            // Retained messages come first, as soon as the subscription is in place.
            match subscriber.lines.recv_timeout(Duration::from_millis(300)) {
                Ok(message) if message.topic == "visiond-test/ready" => break,
                Ok(message) => subscriber.received.push(message),
                Err(_) => {}
            }
        }
        subscriber
    }

    /// Reads what has arrived until `done` says enough (or `timeout`, then panics with all).
    pub fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[Received]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(&self.received) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; received:\n{:#?}",
                self.received
            );
            if let Ok(message) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
                && message.topic != "visiond-test/ready"
            {
                self.received.push(message);
            }
        }
    }

    /// Everything received on `topic`.
    pub fn on(&self, topic: &str) -> Vec<&Received> {
        self.received.iter().filter(|m| m.topic == topic).collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_pub` once.
pub fn publish(broker: &Mosquitto, topic: &str, message: &str, args: &[&str]) {
    let _ = Command::new(program("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-t", topic, "-m", message])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A password file for mosquitto with one user.
pub fn password_file(dir: &Path, user: &str, password: &str) -> PathBuf {
    let file = dir.join("passwords");
    let status = Command::new(program("mosquitto_passwd"))
        .args(["-c", "-b"])
        .arg(&file)
        .args([user, password])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    file
}

/// A certificate authority, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate, made with the openssl command line in `dir`.
pub struct Certificates {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn certificates(dir: &Path) -> Certificates {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=visiond test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=visiond")] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }
    Certificates {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

/// Checks `message` against the published schema in docs/, panicking with what is wrong.
pub fn check_schema(message: &serde_json::Value) {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema/visiond-messages.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let id = schema["$id"].as_str().unwrap().to_string();
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler.add_resource(&id, schema).unwrap();
    let index = compiler.compile(&id, &mut schemas).unwrap();
    if let Err(error) = schemas.validate(message, index) {
        panic!("{message} does not follow docs/schema/visiond-messages.schema.json: {error:#}");
    }
}

/// tansu, a Kafka-API broker, keeping its topics in memory.
pub struct Tansu {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Tansu {
    /// The binary scripts/setup builds (or `VISIOND_TANSU_ROOT/bin/tansu`).
    pub fn binary() -> PathBuf {
        let root = std::env::var_os("VISIOND_TANSU_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let cache = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(std::env::var("HOME").unwrap()).join(".cache")
                    });
                cache.join("visiond/tansu-0.6")
            });
        let binary = root.join("bin/tansu");
        assert!(
            binary.exists(),
            "{} is missing: scripts/setup (make test runs it) builds tansu there once",
            binary.display()
        );
        binary
    }

    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let log = dir.join("tansu.log");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(Self::binary())
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(port, "tansu", &log);
        Tansu { child, port, log }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
