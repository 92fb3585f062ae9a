//! Whether what an appsrc is given goes anywhere: an output or a recording is `up` only while
//! frames leave its appsrc. One that stopped taking frames without posting an error (a
//! recording rebuilt while the process was out of file descriptors gets a bus that never
//! wakes and a muxer that never writes) would otherwise say `up` for ever while its queue
//! stays full and every frame is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

/// How long frames may wait in an appsrc with none leaving it before the output it feeds is
/// taken for stuck.
pub const STALL: Duration = Duration::from_secs(5);

/// Counts the buffers leaving an appsrc, and says when frames have waited in it for
/// [`STALL`] with none leaving.
#[derive(Clone)]
pub struct FlowWatch {
    appsrc: gst_app::AppSrc,
    left: Arc<AtomicU64>,
    /// The count of buffers that had left at the last sign of life, and when that was.
    seen: Arc<Mutex<(u64, Instant)>>,
    stall: Duration,
}

impl FlowWatch {
    /// Watches `appsrc` (a probe on its source pad counts what leaves).
    pub fn new(appsrc: &gst_app::AppSrc, stall: Duration) -> Self {
        let left = Arc::new(AtomicU64::new(0));
        if let Some(pad) = appsrc.static_pad("src") {
            let counter = left.clone();
            pad.add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
                move |_, _| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    gst::PadProbeReturn::Ok
                },
            );
        }
        Self {
            appsrc: appsrc.clone(),
            left,
            seen: Arc::new(Mutex::new((0, Instant::now()))),
            stall,
        }
    }

    /// How long frames have waited with none leaving, once that is [`STALL`] or more; `None`
    /// while they flow, or while nothing waits.
    pub fn stalled(&self) -> Option<Duration> {
        let left = self.left.load(Ordering::Relaxed);
        let waiting = self.appsrc.property::<u64>("current-level-buffers") > 0;
        let Ok(mut seen) = self.seen.lock() else {
            return None;
        };
        if left != seen.0 || !waiting {
            *seen = (left, Instant::now());
            return None;
        }
        let waited = seen.1.elapsed();
        (waited >= self.stall).then_some(waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_that_wait_with_none_leaving_are_a_stall_and_flowing_ones_are_not() {
        gst::init().unwrap();
        // An appsrc whose pipeline never plays: what it is given stays.
        let stuck = gst::parse::launch("appsrc name=src ! fakesink")
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let appsrc = stuck
            .by_name("src")
            .unwrap()
            .downcast::<gst_app::AppSrc>()
            .unwrap();
        let watch = FlowWatch::new(&appsrc, Duration::from_millis(200));
        assert_eq!(watch.stalled(), None, "nothing waits yet");
        appsrc
            .push_buffer(gst::Buffer::with_size(8).unwrap())
            .unwrap();
        assert_eq!(watch.stalled(), None, "it has only begun to wait");
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            watch
                .stalled()
                .is_some_and(|w| w >= Duration::from_millis(200))
        );

        // The same in a playing pipeline: frames leave, however long it runs.
        let flowing = gst::parse::launch("appsrc name=src format=time ! fakesink sync=false")
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let appsrc = flowing
            .by_name("src")
            .unwrap()
            .downcast::<gst_app::AppSrc>()
            .unwrap();
        let watch = FlowWatch::new(&appsrc, Duration::from_millis(200));
        flowing.set_state(gst::State::Playing).unwrap();
        for _ in 0..20 {
            appsrc
                .push_buffer(gst::Buffer::with_size(8).unwrap())
                .unwrap();
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(watch.stalled(), None);
        }
        let _ = flowing.set_state(gst::State::Null);
        let _ = stuck.set_state(gst::State::Null);
    }
}
