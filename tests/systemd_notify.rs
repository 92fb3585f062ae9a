//! sd_notify against a real datagram socket set as `NOTIFY_SOCKET`: `visiond run` says
//! READY, STATUS and WATCHDOG, RELOADING (and READY again) on SIGHUP, then STOPPING on SIGTERM; the watchdog pings stop when a worker
//! wedges (a model stand-in that blocks), and resume when it comes back.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use visiond::config::Task;
use visiond::control::systemd::{self, Notifier};
use visiond::frames::{Frame, Processed};
use visiond::pipeline::engine::Engine;
use visiond::runtime::{BatchInference, FrameFailure, HostFrames, LoadError, ModelRuntime};

use common::*;

/// Every datagram that arrives within `wait`, as text.
fn receive_for(socket: &UnixDatagram, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buffer) {
            Ok(n) => got.push(String::from_utf8_lossy(&buffer[..n]).into_owned()),
            Err(_) => return got,
        }
    }
}

/// Discards what was sent before now.
fn drain(socket: &UnixDatagram) {
    socket.set_nonblocking(true).unwrap();
    let mut buffer = [0u8; 4096];
    while socket.recv(&mut buffer).is_ok() {}
    socket.set_nonblocking(false).unwrap();
}

fn has(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

#[test]
fn visiond_run_says_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = write_tree(
        dir.path(),
        "",
        &[Pipeline::new("live")
            .source(Source::test(64, 48).fps(30))
            .model("none")
            .jsonl(&out.path().join("live.jsonl"))],
    );
    let daemon = Daemon::spawn(
        &file,
        &[
            ("NOTIFY_SOCKET", &socket_path.display().to_string()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let early = receive_for(&socket, Duration::from_secs(3));
    let ready = early
        .iter()
        .position(|m| has(m, "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 in {early:?}"));
    assert!(
        early[ready]
            .lines()
            .any(|l| l.starts_with("STATUS=1 pipeline(s)")),
        "{early:?}"
    );
    // Pinged at half the interval: several times in three seconds, all after READY.
    let pings: Vec<usize> = (0..early.len())
        .filter(|&i| has(&early[i], "WATCHDOG=1"))
        .collect();
    assert!(pings.len() >= 3, "{early:?}");
    assert!(pings.iter().all(|&i| i >= ready), "{early:?}");
    // A reload: RELOADING, then READY again once applied.
    daemon.signal("HUP");
    let reload = receive_for(&socket, Duration::from_secs(2));
    let reloading = reload
        .iter()
        .position(|m| has(m, "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 in {reload:?}"));
    assert!(
        reload[reloading..].iter().any(|m| has(m, "READY=1")),
        "{reload:?}"
    );
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
    let late = receive_for(&socket, Duration::from_millis(300));
    assert!(late.iter().any(|m| has(m, "STOPPING=1")), "{late:?}");
}

#[test]
fn without_notify_socket_nothing_is_sent_and_nothing_fails() {
    // Not under systemd: no notifier at all.
    // SAFETY: this test binary sets no other environment, and no thread reads it meanwhile.
    unsafe { std::env::remove_var("NOTIFY_SOCKET") };
    assert!(Notifier::from_env().is_none());
    assert_eq!(systemd::watchdog_interval(), None);
}

/// A model stand-in that passes frames through, or blocks inside a batch while `wedged`.
struct Wedge {
    wedged: Arc<AtomicBool>,
}

impl BatchInference for Wedge {
    fn process(&mut self, frames: Vec<Frame>) -> Vec<Result<Processed, FrameFailure>> {
        while self.wedged.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        frames
            .into_iter()
            .map(|f| Ok(Processed::passthrough(f)))
            .collect()
    }
}

#[test]
fn the_watchdog_stops_while_a_worker_is_wedged_and_resumes_after() {
    let out = tempfile::tempdir().unwrap();
    let (_dir, config) = temp_tree(
        // The model is loaded by the stand-in below; the fixture only passes the check.
        &format!("models:\n{}", model_yaml("wedge", "dpt-vit", "")),
        &[Pipeline::new("live")
            .source(Source::test(64, 48).fps(30))
            .model("wedge")
            .jsonl(&out.path().join("live.jsonl"))],
    );
    let wedged = Arc::new(AtomicBool::new(false));
    let loader = {
        let wedged = wedged.clone();
        move |_: &str| -> Result<ModelRuntime, LoadError> {
            Ok(ModelRuntime {
                inference: Box::new(Wedge {
                    wedged: wedged.clone(),
                }),
                stager: Arc::new(HostFrames),
                task: Task::Depth,
                cuda_device: None,
            })
        }
    };
    let engine = Engine::start(&config, &loader).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let notifier = Arc::new(Notifier::at(&path).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let interval = Duration::from_millis(300);
    let supervise = Mutex::new(Some(systemd::supervise(
        notifier,
        engine.view(),
        Some(interval),
    )));
    let background = std::thread::spawn(move || {
        let future = supervise.lock().unwrap().take().unwrap();
        runtime.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(6), future).await;
        });
    });
    let pings = |messages: &[String]| messages.iter().filter(|m| has(m, "WATCHDOG=1")).count();
    let healthy = receive_for(&socket, Duration::from_millis(1200));
    assert!(pings(&healthy) >= 3, "{healthy:?}");
    wedged.store(true, Ordering::Relaxed);
    // The batch now running never ends; past one interval the pings must stop, while the
    // status line keeps coming.
    std::thread::sleep(interval + Duration::from_millis(300));
    drain(&socket);
    let stuck = receive_for(&socket, Duration::from_millis(1200));
    assert_eq!(pings(&stuck), 0, "{stuck:?}");
    assert!(stuck.iter().any(|m| m.starts_with("STATUS=")), "{stuck:?}");
    wedged.store(false, Ordering::Relaxed);
    drain(&socket);
    let recovered = receive_for(&socket, Duration::from_millis(1200));
    assert!(pings(&recovered) >= 2, "{recovered:?}");
    engine.shutdown_handle().trigger();
    engine.wait();
    background.join().unwrap();
}

#[test]
fn a_service_manager_that_stops_reading_never_blocks_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let _unread = UnixDatagram::bind(&path).unwrap();
    let notifier = Notifier::at(&path).unwrap();
    let started = Instant::now();
    // Far more than a socket buffer holds; a blocking send would hang here.
    let refused = (0..100_000)
        .filter(|_| notifier.notify("STATUS=filling the buffer").is_err())
        .count();
    assert!(refused > 0, "the buffer never filled");
    assert!(started.elapsed() < Duration::from_secs(10));
}
