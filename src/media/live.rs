//! A pipeline's encoded video handed to its live viewers (browsers, over WebRTC or MSE) as the
//! encoder makes it: no second encode, one buffer shared by every viewer.
//!
//! The feed outlives each life of the pipeline's output (a rebuilt output is attached again)
//! and is read at the output's tee by a buffer probe, on the encoder's own thread; there it
//! only offers each access unit to each viewer without waiting. A viewer whose queue is full
//! loses that unit (counted), and then waits for the next keyframe, so a slow viewer drops on
//! its own branch and never holds up the pipeline or the other viewers. A viewer starts at a
//! keyframe: when one joins, the encoder is asked for one at once (at most once a
//! [`KEYFRAME_REQUEST_INTERVAL`], however many join).

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_video as gst_video;

/// The element whose input the viewers get: the output's tee, after `h264parse` (which puts
/// SPS and PPS before every keyframe).
const TEE: &str = "visiond_tee";
const ENCODER: &str = "visiond_encoder";

/// The encoder is asked for a keyframe at most this often: many viewers joining at once, or
/// a viewer that keeps falling behind, cost one keyframe, not a keyframe each.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(1000);

/// One H.264 access unit as the encoder made it (Annex-B byte stream, with its timestamps);
/// shared, never copied, between viewers.
#[derive(Debug, Clone)]
pub struct EncodedUnit {
    pub buffer: gst::Buffer,
    pub keyframe: bool,
}

/// What became of a unit offered to a viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Taken,
    /// The viewer's queue is full: the unit was dropped for this viewer alone.
    Full,
    /// The viewer is gone: it is removed from the feed.
    Gone,
}

/// How a viewer watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViewerKind {
    Webrtc,
    Mse,
}

impl ViewerKind {
    pub fn name(self) -> &'static str {
        match self {
            ViewerKind::Webrtc => "webrtc",
            ViewerKind::Mse => "mse",
        }
    }
}

/// One viewer's end of the feed.
pub trait Viewer: Send {
    /// Takes `unit` without waiting (this runs on the encoder's thread).
    fn deliver(&mut self, unit: &EncodedUnit) -> Delivery;
    /// Whether the viewer can take video yet (a WebRTC peer before its connection is up
    /// cannot; it then starts at the keyframe after it is).
    fn ready(&self) -> bool {
        true
    }
}

/// Why a viewer was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it already has {max} live viewers (http.webrtc.max_viewers)")]
    Full { max: usize },
    #[error("it has stopped")]
    Closed,
}

struct Slot {
    id: u64,
    kind: ViewerKind,
    viewer: Box<dyn Viewer>,
    /// Units are held back from this viewer until a keyframe (it joined, or lost a unit).
    needs_keyframe: bool,
    /// It has had a unit: from then on, every unit it does not get counts as dropped.
    started: bool,
}

#[derive(Default)]
struct FeedState {
    slots: Vec<Slot>,
    encoder: Option<glib::WeakRef<gst::Element>>,
    last_request: Option<Instant>,
    closed: bool,
}

/// One pipeline's live video and its viewers.
#[derive(Default)]
pub struct LiveFeed {
    state: Mutex<FeedState>,
    next_id: AtomicU64,
    /// Units a viewer did not get, all viewers together: those its full queue refused, and
    /// those held back from it until the next keyframe after such a loss.
    dropped: AtomicU64,
    /// Keyframes asked of the encoder for viewers.
    keyframe_requests: AtomicU64,
    /// The stream's H.264 profile (`profile_idc` of its SPS), 0 before the first keyframe:
    /// a WebRTC answer names it.
    profile_idc: AtomicU8,
}

/// A viewer's place in the feed; dropping it removes the viewer.
pub struct ViewerHandle {
    feed: Weak<LiveFeed>,
    id: u64,
}

impl Drop for ViewerHandle {
    fn drop(&mut self) {
        if let Some(feed) = self.feed.upgrade() {
            feed.remove(self.id);
        }
    }
}

impl ViewerHandle {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl std::fmt::Debug for LiveFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFeed")
            .field("viewers", &self.state().slots.len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl ViewerHandle {
    /// Whether the feed still runs (its pipeline was neither removed nor replaced).
    pub fn attached(&self) -> bool {
        self.feed.upgrade().is_some_and(|feed| !feed.state().closed)
    }
}

impl LiveFeed {
    fn state(&self) -> std::sync::MutexGuard<'_, FeedState> {
        // A viewer that panicked in `deliver` must not take the feed down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds the viewers from `pipeline`'s tee (a new output of this pipeline); a pipeline
    /// without video has none, and the viewers wait.
    pub fn attach(self: &Arc<Self>, pipeline: &gst::Pipeline) {
        let Some(pad) = pipeline.by_name(TEE).and_then(|tee| tee.static_pad("sink")) else {
            return;
        };
        self.state().encoder = pipeline.by_name(ENCODER).map(|e| e.downgrade());
        let feed = Arc::downgrade(self);
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let Some(feed) = feed.upgrade() else {
                return gst::PadProbeReturn::Remove;
            };
            if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
                feed.offer(buffer);
            }
            gst::PadProbeReturn::Ok
        });
    }

    /// Adds a viewer, unless the pipeline has `max` already or has stopped.
    pub fn add(
        self: &Arc<Self>,
        kind: ViewerKind,
        viewer: Box<dyn Viewer>,
        max: usize,
    ) -> Result<ViewerHandle, Refusal> {
        // Ids start at 1: 0 marks a slot whose viewer went away.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut state = self.state();
            if state.closed {
                return Err(Refusal::Closed);
            }
            if state.slots.len() >= max {
                return Err(Refusal::Full { max });
            }
            state.slots.push(Slot {
                id,
                kind,
                viewer,
                needs_keyframe: true,
                started: false,
            });
        }
        self.request_keyframe();
        Ok(ViewerHandle {
            feed: Arc::downgrade(self),
            id,
        })
    }

    fn remove(&self, id: u64) {
        // The viewer is dropped outside the lock: its drop may stop a GStreamer pipeline.
        let removed = {
            let mut state = self.state();
            let index = state.slots.iter().position(|slot| slot.id == id);
            index.map(|index| state.slots.remove(index))
        };
        drop(removed);
    }

    /// The pipeline is gone: every viewer is let go and no new one is taken.
    pub fn close(&self) {
        let slots = {
            let mut state = self.state();
            state.closed = true;
            state.encoder = None;
            std::mem::take(&mut state.slots)
        };
        drop(slots);
    }

    /// Viewers of `kind` now.
    pub fn viewers(&self, kind: ViewerKind) -> usize {
        self.state().slots.iter().filter(|s| s.kind == kind).count()
    }

    /// Viewers of either kind now.
    pub fn viewer_count(&self) -> usize {
        self.state().slots.len()
    }

    /// Units dropped for viewers whose queue was full, so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Keyframes asked of the encoder for viewers, so far.
    pub fn keyframe_requests(&self) -> u64 {
        self.keyframe_requests.load(Ordering::Relaxed)
    }

    /// The stream's H.264 profile, once a keyframe went by.
    pub fn profile_idc(&self) -> Option<u8> {
        Some(self.profile_idc.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }

    /// Asks the encoder for a keyframe now, unless one was asked for less than
    /// [`KEYFRAME_REQUEST_INTERVAL`] ago (a WebRTC peer's picture-loss report comes here too).
    pub fn request_keyframe(&self) {
        let encoder = {
            let mut state = self.state();
            let now = Instant::now();
            if state
                .last_request
                .is_some_and(|last| now.duration_since(last) < KEYFRAME_REQUEST_INTERVAL)
            {
                return;
            }
            let Some(encoder) = state.encoder.as_ref().and_then(|e| e.upgrade()) else {
                return;
            };
            state.last_request = Some(now);
            encoder
        };
        self.keyframe_requests.fetch_add(1, Ordering::Relaxed);
        let event = gst_video::UpstreamForceKeyUnitEvent::builder()
            .all_headers(true)
            .build();
        encoder.send_event(event);
    }

    /// Offers one access unit to every viewer (the encoder's thread).
    fn offer(&self, buffer: &gst::Buffer) {
        let unit = EncodedUnit {
            buffer: buffer.clone(),
            keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
        };
        if unit.keyframe
            && let Ok(map) = buffer.map_readable()
            && let Some(profile) = sps_profile(&map)
        {
            self.profile_idc.store(profile, Ordering::Relaxed);
        }
        let mut want_keyframe = false;
        let gone = {
            let mut state = self.state();
            if state.slots.is_empty() {
                return;
            }
            for slot in state.slots.iter_mut() {
                if !slot.viewer.ready() {
                    slot.needs_keyframe = true;
                    continue;
                }
                if slot.needs_keyframe && !unit.keyframe {
                    if slot.started {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    want_keyframe = true;
                    continue;
                }
                match slot.viewer.deliver(&unit) {
                    Delivery::Taken => {
                        slot.needs_keyframe = false;
                        slot.started = true;
                    }
                    Delivery::Full => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        slot.needs_keyframe = true;
                        want_keyframe = true;
                    }
                    Delivery::Gone => slot.id = 0,
                }
            }
            let (gone, kept): (Vec<Slot>, Vec<Slot>) = std::mem::take(&mut state.slots)
                .into_iter()
                .partition(|s| s.id == 0);
            state.slots = kept;
            gone
        };
        drop(gone);
        if want_keyframe {
            self.request_keyframe();
        }
    }
}

/// The `profile_idc` of the first SPS in an Annex-B access unit.
fn sps_profile(bytes: &[u8]) -> Option<u8> {
    bytes
        .windows(4)
        .position(|w| w[0] == 0 && w[1] == 0 && w[2] == 1 && w[3] & 0x1f == 7)
        .and_then(|at| bytes.get(at + 4).copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A viewer with a queue of `room` units that the test empties.
    struct Queue {
        tx: mpsc::SyncSender<EncodedUnit>,
    }

    impl Viewer for Queue {
        fn deliver(&mut self, unit: &EncodedUnit) -> Delivery {
            match self.tx.try_send(unit.clone()) {
                Ok(()) => Delivery::Taken,
                Err(mpsc::TrySendError::Full(_)) => Delivery::Full,
                Err(mpsc::TrySendError::Disconnected(_)) => Delivery::Gone,
            }
        }
    }

    fn unit(keyframe: bool) -> gst::Buffer {
        let mut buffer = gst::Buffer::with_size(4).unwrap();
        if !keyframe {
            buffer
                .get_mut()
                .unwrap()
                .set_flags(gst::BufferFlags::DELTA_UNIT);
        }
        buffer
    }

    #[test]
    fn viewers_start_at_a_keyframe_and_a_slow_one_loses_only_its_own_units() {
        gst::init().unwrap();
        let feed = Arc::new(LiveFeed::default());
        let (fast_tx, fast_rx) = mpsc::sync_channel(100);
        let (slow_tx, slow_rx) = mpsc::sync_channel(2);
        let _fast = feed
            .add(ViewerKind::Mse, Box::new(Queue { tx: fast_tx }), 4)
            .unwrap();
        let slow = feed
            .add(ViewerKind::Webrtc, Box::new(Queue { tx: slow_tx }), 4)
            .unwrap();
        // Deltas before the first keyframe reach nobody.
        feed.offer(&unit(false));
        feed.offer(&unit(true));
        for _ in 0..5 {
            feed.offer(&unit(false));
        }
        let fast: Vec<bool> = fast_rx.try_iter().map(|u| u.keyframe).collect();
        assert_eq!(fast, [true, false, false, false, false, false]);
        // The slow viewer took two, then lost the rest (each counted) and waits for a keyframe.
        assert_eq!(slow_rx.try_iter().count(), 2);
        assert_eq!(feed.dropped(), 4);
        feed.offer(&unit(false));
        assert_eq!(slow_rx.try_iter().count(), 0, "a delta after a loss");
        assert_eq!(feed.dropped(), 5);
        feed.offer(&unit(true));
        assert!(slow_rx.try_iter().next().unwrap().keyframe);
        assert_eq!(feed.viewers(ViewerKind::Webrtc), 1);
        drop(slow);
        assert_eq!(feed.viewers(ViewerKind::Webrtc), 0);
        assert_eq!(feed.viewers(ViewerKind::Mse), 1);
    }

    #[test]
    fn one_viewer_too_many_is_refused_and_a_closed_feed_takes_none() {
        gst::init().unwrap();
        let feed = Arc::new(LiveFeed::default());
        let (tx, _rx) = mpsc::sync_channel(1);
        let _one = feed
            .add(ViewerKind::Mse, Box::new(Queue { tx: tx.clone() }), 1)
            .unwrap();
        let refused = feed
            .add(ViewerKind::Mse, Box::new(Queue { tx: tx.clone() }), 1)
            .err()
            .unwrap();
        assert_eq!(
            refused.to_string(),
            "it already has 1 live viewers (http.webrtc.max_viewers)"
        );
        feed.close();
        assert_eq!(feed.viewers(ViewerKind::Mse), 0);
        assert!(matches!(
            feed.add(ViewerKind::Mse, Box::new(Queue { tx }), 1),
            Err(Refusal::Closed)
        ));
    }

    #[test]
    fn the_profile_is_read_from_the_sps_of_a_keyframe() {
        assert_eq!(
            sps_profile(&[0, 0, 0, 1, 0x09, 0xf0, 0, 0, 1, 0x67, 0x64, 0, 0x1f]),
            Some(0x64)
        );
        assert_eq!(sps_profile(&[0, 0, 1, 0x65, 0x88]), None);
        assert_eq!(sps_profile(&[0, 0, 1, 0x67]), None);
    }

    #[test]
    fn a_viewer_that_went_away_is_removed() {
        gst::init().unwrap();
        let feed = Arc::new(LiveFeed::default());
        let (tx, rx) = mpsc::sync_channel(4);
        let _handle = feed
            .add(ViewerKind::Mse, Box::new(Queue { tx }), 2)
            .unwrap();
        drop(rx);
        feed.offer(&unit(true));
        assert_eq!(feed.viewers(ViewerKind::Mse), 0);
    }
}
