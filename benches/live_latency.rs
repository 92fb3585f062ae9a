//! Glass-to-glass latency of live viewing, measured: a camera stand-in draws each frame's
//! capture time (wall clock, ms) into the picture as 32 black or white blocks; the daemon
//! takes it over RTSP as a camera, publishes it (model `none`, its own H.264), and three
//! viewers read the time back from what they display, on the same machine's clock:
//! headless Chromium over WebRTC (WHEP) and over MSE (`/view/<name>`, the pixels drawn into
//! a canvas at each presented frame), and ffmpeg reading the daemon's RTSP stream (the usual
//! way to watch a camera, and the baseline). All three watch the same stream in the same run.
//!
//! `cargo bench --bench live_latency` measures for `LIVE_LATENCY_SECS` (default 30) per
//! viewer and `LIVE_LATENCY_MSE_SECS` (default the same) for MSE, printing p50, p99 and, for
//! MSE, p50 per minute (drift); under `cargo test` it runs 5 s each as a check that it works.

// The tests' Chromium harness; this bench uses a part of it.
#[allow(dead_code)]
#[path = "../tests/common/browser.rs"]
mod browser;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use browser::Browser;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server::prelude::*;

const WIDTH: usize = 640;
const HEIGHT: usize = 480;
/// Each of the 32 bits is a BLOCK×BLOCK square, 16 to a row, two rows at the top.
const BLOCK: usize = 40;

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An I420 frame with `stamp` drawn into it.
fn frame(stamp: u32) -> Vec<u8> {
    let mut data = vec![128u8; WIDTH * HEIGHT * 3 / 2];
    data[..WIDTH * HEIGHT].fill(90);
    for bit in 0..32 {
        let value = if stamp >> bit & 1 == 1 { 235 } else { 16 };
        let (bx, by) = ((bit % 16) * BLOCK, (bit / 16) * BLOCK);
        for y in by..by + BLOCK {
            data[y * WIDTH + bx..y * WIDTH + bx + BLOCK].fill(value);
        }
    }
    data
}

/// The stamp in a luma plane (row stride `WIDTH`), or `None` where a block is not clearly
/// black or white (a frame still being refined by the decoder).
fn read_stamp(luma: &[u8]) -> Option<u32> {
    let mut stamp = 0u32;
    for bit in 0..32 {
        let (x, y) = (
            (bit % 16) * BLOCK + BLOCK / 2,
            (bit / 16) * BLOCK + BLOCK / 2,
        );
        match *luma.get(y * WIDTH + x)? {
            v if v > 180 => stamp |= 1 << bit,
            v if v < 60 => {}
            _ => return None,
        }
    }
    Some(stamp)
}

/// The camera: an RTSP server whose `/cam` encodes frames stamped as they are made.
struct Camera {
    _server: gstreamer_rtsp_server::RTSPServer,
    main_loop: gst::glib::MainLoop,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl Camera {
    fn start() -> Self {
        let server = gstreamer_rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service("0");
        let factory = gstreamer_rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(&format!(
            "( appsrc name=src is-live=true format=time do-timestamp=true \
             caps=video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate=30/1 \
             ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 sliced-threads=false \
             ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        ));
        factory.set_shared(true);
        let stop = Arc::new(AtomicBool::new(false));
        factory.connect_media_configure({
            let stop = stop.clone();
            move |_, media| {
                let bin = media.element().downcast::<gst::Bin>().unwrap();
                let src = bin
                    .by_name("src")
                    .unwrap()
                    .downcast::<gst_app::AppSrc>()
                    .unwrap();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let started = Instant::now();
                    for n in 0u64.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let due = started + Duration::from_nanos(n * 1_000_000_000 / 30);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        let buffer = gst::Buffer::from_slice(frame(wall_ms() as u32));
                        if src.push_buffer(buffer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        server.mount_points().unwrap().add_factory("/cam", factory);
        let context = gst::glib::MainContext::new();
        server.attach(Some(&context)).unwrap();
        let main_loop = gst::glib::MainLoop::new(Some(&context), false);
        std::thread::spawn({
            let main_loop = main_loop.clone();
            move || {
                let _guard = context.acquire().unwrap();
                main_loop.run();
            }
        });
        let port = server.bound_port() as u16;
        Self {
            _server: server,
            main_loop,
            stop,
            port,
        }
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.main_loop.quit();
    }
}

struct Daemon {
    child: Child,
    port: u16,
    rtsp: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn daemon(camera: u16) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let (port, rtsp) = (free_port(), free_port());
    std::fs::create_dir(dir.path().join("pipelines")).unwrap();
    std::fs::write(
        dir.path().join("visiond.yaml"),
        format!(
            "http: {{ listen: \"127.0.0.1:{port}\" }}\nrtsp: {{ port: {rtsp}, address: 127.0.0.1 }}\n\
             pipelines_dir: pipelines\nlog: {{ format: text, level: warn }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pipelines/live.yaml"),
        format!(
            "name: live\nsource:\n  uri: \"rtsp://127.0.0.1:{camera}/cam\"\n  rtsp: {{ latency_ms: 0 }}\n\
             model: none\nsinks:\n  - rtsp: {{ mount: /live }}\n"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_visiond"))
        .args(["run", "--config"])
        .arg(dir.path().join("visiond.yaml"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon {
        child,
        port,
        rtsp,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let playing = ureq::get(&format!("http://127.0.0.1:{port}/api/pipelines"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .is_some_and(|body| body.contains("\"state\":\"playing\""));
        if playing {
            return daemon;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the daemon did not play the camera within 30 s");
}

/// Latencies (ms) with the second of the run each was taken in.
type Samples = Vec<(f64, f64)>;

/// What the page's player displays, read back at each presented frame for `secs`.
fn browser_latency(daemon: &Daemon, way: &str, secs: u64) -> Samples {
    let mut browser = Browser::launch();
    let page = browser.open(&format!(
        "http://127.0.0.1:{}/view/live?live={way}",
        daemon.port
    ));
    // The page's own player plays; this reads its <video> at each presented frame.
    let script = format!(
        "new Promise((resolve) => {{
          const samples = [];
          const started = performance.now();
          const canvas = document.createElement('canvas');
          canvas.width = {WIDTH}; canvas.height = {HEIGHT};
          const context = canvas.getContext('2d', {{ willReadFrequently: true }});
          const tick = () => {{
            const video = document.getElementById('live');
            if ((window.visiondPlayers.live || {{}}).via === '{way}' && video.videoWidth === {WIDTH}) {{
              context.drawImage(video, 0, 0);
              const pixels = context.getImageData(0, 0, {WIDTH}, {blocks}).data;
              let stamp = 0, clear = true;
              for (let bit = 0; bit < 32; bit++) {{
                const x = (bit % 16) * {BLOCK} + {half}, y = Math.floor(bit / 16) * {BLOCK} + {half};
                const v = pixels[(y * {WIDTH} + x) * 4];
                if (v > 180) stamp = (stamp | (1 << bit)) >>> 0; else if (v >= 60) clear = false;
              }}
              if (clear) samples.push([(performance.now() - started) / 1000, ((Date.now() % 4294967296) - stamp + 4294967296) % 4294967296]);
            }}
            if (performance.now() - started < {ms}) video.requestVideoFrameCallback(tick); else resolve(samples);
          }};
          const wait = () => {{ const v = document.getElementById('live'); if (v && window.visiondPlayers) v.requestVideoFrameCallback(tick); else setTimeout(wait, 50); }};
          wait();
        }})",
        blocks = 2 * BLOCK,
        half = BLOCK / 2,
        ms = secs * 1000,
    );
    let value = browser.eval(&page, &script);
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s[0].as_f64()?, s[1].as_f64()?)))
        .collect()
}

/// ffmpeg reading the daemon's RTSP stream, as an operator watching a camera would
/// (`-fflags nobuffer -flags low_delay`, over TCP), frames decoded to gray.
fn ffmpeg_latency(daemon: &Daemon, secs: u64) -> Samples {
    let mut child = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-fflags",
            "nobuffer",
            "-flags",
            "low_delay",
            "-rtsp_transport",
            "tcp",
            "-i",
        ])
        .arg(format!("rtsp://127.0.0.1:{}/live", daemon.rtsp))
        .args(["-f", "rawvideo", "-pix_fmt", "gray", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg (scripts/setup installs it)");
    let mut out = child.stdout.take().unwrap();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut luma = vec![0u8; WIDTH * HEIGHT];
    while started.elapsed() < Duration::from_secs(secs) {
        if out.read_exact(&mut luma).is_err() {
            break;
        }
        if let Some(stamp) = read_stamp(&luma) {
            let now = wall_ms() as u32;
            samples.push((
                started.elapsed().as_secs_f64(),
                now.wrapping_sub(stamp) as f64,
            ));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    samples
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(name: &str, samples: &Samples) {
    // The first seconds are the player starting (a keyframe, the first buffers): not live
    // viewing yet.
    let mut steady: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t >= 2.0)
        .map(|(_, l)| *l)
        .collect();
    if steady.is_empty() {
        println!("{name:<22} no samples");
        return;
    }
    steady.sort_by(f64::total_cmp);
    println!(
        "{name:<22} {:>6} frames  p50 {:>6.0} ms  p99 {:>6.0} ms  max {:>6.0} ms",
        steady.len(),
        percentile(&steady, 0.5),
        percentile(&steady, 0.99),
        steady[steady.len() - 1]
    );
    let minutes = samples
        .last()
        .map(|(t, _)| (*t / 60.0).ceil() as usize)
        .unwrap_or(0);
    if minutes > 1 {
        let per_minute: Vec<String> = (0..minutes)
            .filter_map(|m| {
                let mut minute: Vec<f64> = samples
                    .iter()
                    .filter(|(t, _)| *t >= (m * 60) as f64 + 2.0 && *t < ((m + 1) * 60) as f64)
                    .map(|(_, l)| *l)
                    .collect();
                minute.sort_by(f64::total_cmp);
                (!minute.is_empty()).then(|| format!("{:.0}", percentile(&minute, 0.5)))
            })
            .collect();
        println!("{:<22} p50 per minute (ms): {}", "", per_minute.join(" "));
    }
}

fn main() {
    gst::init().unwrap();
    let measuring = std::env::args().any(|a| a == "--bench");
    let secs = |key: &str, default: u64| -> u64 {
        if !measuring {
            return 5;
        }
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let each = secs("LIVE_LATENCY_SECS", 30);
    let mse = secs("LIVE_LATENCY_MSE_SECS", each);
    let camera = Camera::start();
    let daemon = daemon(camera.port);
    println!(
        "glass-to-glass latency, 640x480 at 30 frames/s, camera (x264, RTSP, the daemon's \
         jitter buffer at 0 ms) -> visiond (model none, x264) -> viewer, on loopback"
    );
    let rtsp = ffmpeg_latency(&daemon, each);
    report("RTSP, ffmpeg", &rtsp);
    let webrtc = browser_latency(&daemon, "webrtc", each);
    report("WebRTC, Chromium", &webrtc);
    let media_source = browser_latency(&daemon, "mse", mse);
    report("MSE, Chromium", &media_source);
    if !measuring {
        assert!(
            rtsp.len() > 30,
            "ffmpeg read {} stamped frames in 5 s",
            rtsp.len()
        );
        if std::path::Path::new("/usr/bin/chromium").exists() {
            assert!(
                webrtc.len() > 30,
                "WebRTC: {} stamped frames in 5 s",
                webrtc.len()
            );
            assert!(
                media_source.len() > 30,
                "MSE: {} stamped frames in 5 s",
                media_source.len()
            );
        }
    }
}
