//! One WebRTC viewer of a pipeline, answered through WHEP: a small pipeline per peer,
//! `appsrc` (the pipeline's own H.264, from its [`LiveFeed`]) → `rtph264pay` → `webrtcbin`.
//! Nothing is encoded again: the payloader packs the access units the encoder made.
//!
//! The answer is sent whole (ICE gathered first, no trickle), as WHEP clients expect. A peer
//! whose checks come from an address it did not offer (headless Chromium offers no loopback
//! candidate, and hides its host addresses behind mDNS names) is learnt as peer-reflexive by
//! libnice. The peer's picture-loss reports reach the feed as keyframe requests.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;

use super::live::{Delivery, EncodedUnit, LiveFeed, Refusal, Viewer, ViewerHandle, ViewerKind};
use super::{bus, registry};

/// How long a step of the negotiation (a description set, the answer made) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long ICE gathering may take before the answer goes with the candidates it has (a
/// STUN or TURN server that does not answer must not hold the viewer up longer).
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);
/// Access units a viewer's appsrc holds before the next one is dropped for it.
const VIEWER_QUEUE: u64 = 30;

/// Where ICE looks beyond the host's own addresses (`http.webrtc`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceServers {
    pub stun: Option<String>,
    pub turn: Option<String>,
}

/// Why a WHEP offer got no session.
#[derive(Debug, thiserror::Error)]
pub enum WhepError {
    /// The offer itself is wrong (400).
    #[error("{0}")]
    Offer(String),
    /// No room or no pipeline (503 / 404).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The session could not be set up (500).
    #[error("the WebRTC session could not be set up: {0}")]
    Setup(String),
}

/// The peer connection's state, as `webrtcbin` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    New,
    Connecting,
    Connected,
    Disconnected,
    Failed,
    Closed,
}

impl PeerState {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Connecting,
            2 => Self::Connected,
            3 => Self::Disconnected,
            4 => Self::Failed,
            5 => Self::Closed,
            _ => Self::New,
        }
    }

    fn of(state: gst_webrtc::WebRTCPeerConnectionState) -> u8 {
        use gst_webrtc::WebRTCPeerConnectionState as S;
        match state {
            S::Connecting => 1,
            S::Connected => 2,
            S::Disconnected => 3,
            S::Failed => 4,
            S::Closed => 5,
            _ => 0,
        }
    }
}

/// What the session's callbacks share with it.
struct Shared {
    state: AtomicU8,
    /// The viewer pipeline failed (its bus said so).
    broken: AtomicBool,
    /// When the peer was last heard from (its RTCP reports), in ms after `epoch`.
    heard_ms: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn new() -> Self {
        Self {
            state: AtomicU8::new(0),
            broken: AtomicBool::new(false),
            heard_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn heard(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.heard_ms.store(now, Ordering::Relaxed);
    }
}

/// One viewer's connection; dropping it stops its pipeline and leaves the feed.
pub struct WebrtcSession {
    pipeline: gst::Pipeline,
    shared: Arc<Shared>,
    created: Instant,
    viewer: ViewerHandle,
}

impl Drop for WebrtcSession {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

impl WebrtcSession {
    pub fn state(&self) -> PeerState {
        if self.shared.broken.load(Ordering::Relaxed) {
            return PeerState::Failed;
        }
        PeerState::from_u8(self.shared.state.load(Ordering::Relaxed))
    }

    /// How long since the peer was last heard from (it sends RTCP reports every second or
    /// so while it watches): a browser that was killed, or lost its network, says nothing
    /// more, and its ICE connection stays up on this side.
    pub fn silence(&self) -> Duration {
        let heard = self.shared.heard_ms.load(Ordering::Relaxed);
        self.shared
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(heard))
    }

    /// Whether its pipeline still runs.
    pub fn attached(&self) -> bool {
        self.viewer.attached()
    }

    /// How long ago the offer was answered.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// Takes any error the viewer pipeline's bus holds (the session is then failed).
    pub fn poll(&self) -> Option<String> {
        let error = bus::take_error(&self.pipeline)?;
        self.shared.broken.store(true, Ordering::Relaxed);
        Some(error.to_string())
    }
}

/// The viewer end inside the feed: the session's appsrc, fed while the peer is connected.
struct WebrtcViewer {
    appsrc: gst_app::AppSrc,
    shared: Arc<Shared>,
}

impl Viewer for WebrtcViewer {
    fn deliver(&mut self, unit: &EncodedUnit) -> Delivery {
        if self.appsrc.property::<u64>("current-level-buffers") >= VIEWER_QUEUE {
            return Delivery::Full;
        }
        // The appsrc stamps it with its own running time: the viewer's pipeline has a clock
        // of its own, and the source's timestamps mean nothing there.
        let mut buffer = unit.buffer.clone();
        {
            let buffer = buffer.make_mut();
            buffer.set_pts(gst::ClockTime::NONE);
            buffer.set_dts(gst::ClockTime::NONE);
        }
        match self.appsrc.push_buffer(buffer) {
            Ok(_) => Delivery::Taken,
            Err(_) => Delivery::Gone,
        }
    }

    fn ready(&self) -> bool {
        PeerState::from_u8(self.shared.state.load(Ordering::Relaxed)) == PeerState::Connected
    }
}

/// The H.264 format in `offer` that this stream can be sent as: its payload type and
/// `profile-level-id`. Only packetization mode 1 (what `rtph264pay` makes) is taken; of those,
/// the profile `profile_idc` (the stream's) first, constrained baseline next, then any.
fn pick_h264(offer: &gst_sdp::SDPMessageRef, profile_idc: Option<u8>) -> Result<u32, WhepError> {
    let video = offer
        .medias()
        .find(|media| media.media() == Some("video"))
        .ok_or_else(|| WhepError::Offer("the offer has no video section".into()))?;
    let mut candidates: Vec<(u32, String)> = Vec::new();
    for attribute in video.attributes() {
        if attribute.key() != "rtpmap" {
            continue;
        }
        let Some((pt, codec)) = attribute.value().and_then(|v| v.split_once(' ')) else {
            continue;
        };
        if !codec.to_ascii_uppercase().starts_with("H264/90000") {
            continue;
        }
        let Ok(pt) = pt.trim().parse::<u32>() else {
            continue;
        };
        let fmtp = video
            .attributes()
            .filter(|a| a.key() == "fmtp")
            .filter_map(|a| a.value())
            .find_map(|v| {
                let (p, params) = v.split_once(' ')?;
                (p.trim().parse::<u32>().ok() == Some(pt)).then(|| params.to_ascii_lowercase())
            })
            .unwrap_or_default();
        if fmtp.contains("packetization-mode=1") {
            let profile = fmtp
                .split(';')
                .find_map(|p| p.trim().strip_prefix("profile-level-id="))
                .unwrap_or("")
                .to_string();
            candidates.push((pt, profile));
        }
    }
    let idc = |profile: &str| u8::from_str_radix(profile.get(0..2).unwrap_or(""), 16).ok();
    let chosen = profile_idc
        .and_then(|want| candidates.iter().find(|(_, p)| idc(p) == Some(want)))
        .or_else(|| candidates.iter().find(|(_, p)| p.starts_with("42e0")))
        .or_else(|| candidates.first());
    chosen.map(|(pt, _)| *pt).ok_or_else(|| {
        WhepError::Offer(
            "the offer's video has no H.264 in packetization mode 1, which this stream is".into(),
        )
    })
}

/// Waits for a promise's reply, at most [`STEP_TIMEOUT`].
fn wait(
    promise_for: impl FnOnce(gst::Promise),
    step: &str,
) -> Result<Option<gst::Structure>, WhepError> {
    let (tx, rx) = mpsc::sync_channel(1);
    let promise = gst::Promise::with_change_func(move |reply| {
        let reply = match reply {
            Ok(reply) => Ok(reply.map(|s| s.to_owned())),
            Err(e) => Err(format!("{e:?}")),
        };
        let _ = tx.try_send(reply);
    });
    promise_for(promise);
    match rx.recv_timeout(STEP_TIMEOUT) {
        Ok(Ok(reply)) => {
            if let Some(error) = reply
                .as_ref()
                .and_then(|s| s.get::<gst::glib::Error>("error").ok())
            {
                return Err(WhepError::Setup(format!("{step}: {error}")));
            }
            Ok(reply)
        }
        Ok(Err(e)) => Err(WhepError::Setup(format!("{step}: {e}"))),
        Err(_) => Err(WhepError::Setup(format!(
            "{step}: no answer within {} s",
            STEP_TIMEOUT.as_secs()
        ))),
    }
}

/// Answers `offer` (SDP text) with a session that sends `feed`'s video; the answer's SDP
/// carries every candidate gathered.
pub fn answer(
    offer: &str,
    feed: &Arc<LiveFeed>,
    max_viewers: usize,
    ice: &IceServers,
    pipeline_name: &str,
) -> Result<(WebrtcSession, String), WhepError> {
    let offer = without_mdns_candidates(offer);
    let sdp = gst_sdp::SDPMessage::parse_buffer(offer.as_bytes())
        .map_err(|_| WhepError::Offer("the body is not an SDP offer".into()))?;
    let pt = pick_h264(&sdp, feed.profile_idc())?;
    let what = format!("the WebRTC viewer of pipeline {pipeline_name}");
    let description = format!(
        "appsrc name=src is-live=true format=time do-timestamp=true min-latency=0 \
         caps=video/x-h264,stream-format=byte-stream,alignment=au \
         ! rtph264pay config-interval=-1 aggregate-mode=zero-latency mtu=1200 pt={pt} \
         ! application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,payload={pt},\
         rtcp-fb-nack-pli=true \
         ! webrtcbin name=webrtc bundle-policy=max-bundle latency=0"
    );
    let pipeline =
        registry::launch(&description, &what).map_err(|e| WhepError::Setup(e.to_string()))?;
    let stop = |error: WhepError| {
        let _ = pipeline.set_state(gst::State::Null);
        error
    };
    let webrtc = registry::named::<gst::Element>(&pipeline, "webrtc", &what)
        .map_err(|e| stop(WhepError::Setup(e.to_string())))?;
    let appsrc = registry::named::<gst_app::AppSrc>(&pipeline, "src", &what)
        .map_err(|e| stop(WhepError::Setup(e.to_string())))?;
    if let Some(stun) = &ice.stun {
        webrtc.set_property("stun-server", stun);
    }
    if let Some(turn) = &ice.turn {
        webrtc.set_property("turn-server", turn);
    }
    let shared = Arc::new(Shared::new());
    webrtc.connect_notify(Some("connection-state"), {
        let shared = shared.clone();
        move |webrtc, _| {
            let state =
                webrtc.property::<gst_webrtc::WebRTCPeerConnectionState>("connection-state");
            shared.state.store(PeerState::of(state), Ordering::Relaxed);
        }
    });
    // The peer's picture-loss reports come up as force-key-unit requests.
    if let Some(pad) = appsrc.static_pad("src") {
        let feed = Arc::downgrade(feed);
        pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
            if let Some(gst::PadProbeData::Event(event)) = &info.data
                && gstreamer_video::ForceKeyUnitEvent::is(event)
                && let Some(feed) = feed.upgrade()
            {
                feed.request_keyframe();
            }
            gst::PadProbeReturn::Ok
        });
    }
    let viewer = feed
        .add(
            ViewerKind::Webrtc,
            Box::new(WebrtcViewer {
                appsrc: appsrc.clone(),
                shared: shared.clone(),
            }),
            max_viewers,
        )
        .map_err(|e| stop(e.into()))?;
    let session = WebrtcSession {
        pipeline: pipeline.clone(),
        shared: shared.clone(),
        created: Instant::now(),
        viewer,
    };
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| WhepError::Setup(format!("{what} did not start")))?;
    let answer_sdp = negotiate(&webrtc, sdp)?;
    listen_to_peer(&webrtc, &shared);
    shared.heard();
    Ok((session, answer_sdp))
}

/// Notes every packet from the peer (DTLS, SRTCP) that reaches webrtcbin's ICE sources,
/// which exist once the descriptions are set.
fn listen_to_peer(webrtc: &gst::Element, shared: &Arc<Shared>) {
    let Some(bin) = webrtc.downcast_ref::<gst::Bin>() else {
        return;
    };
    for element in bin.iterate_recurse().into_iter().flatten() {
        let is_source = element
            .factory()
            .is_some_and(|factory| factory.name() == "nicesrc");
        if let (true, Some(pad)) = (is_source, element.static_pad("src")) {
            let shared = Arc::downgrade(shared);
            pad.add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
                move |_, _| {
                    if let Some(shared) = shared.upgrade() {
                        shared.heard();
                    }
                    gst::PadProbeReturn::Ok
                },
            );
        }
    }
}

/// The offer without its mDNS host candidates (`<uuid>.local`, which browsers put in place
/// of their addresses): nothing here can resolve them, and webrtcbin 1.22 keeps its ICE
/// agent (its sockets and thread) alive for good after a session that was given any. The
/// peer's checks still reach us, and are answered as peer-reflexive.
fn without_mdns_candidates(offer: &str) -> String {
    offer
        .split_inclusive('\n')
        .filter(|line| {
            !(line.starts_with("a=candidate:")
                && line
                    .split_whitespace()
                    .nth(4)
                    .is_some_and(|address| address.ends_with(".local")))
        })
        .collect()
}

/// Sets the offer, makes and sets the answer, waits for ICE gathering; the answer's text.
fn negotiate(webrtc: &gst::Element, offer: gst_sdp::SDPMessage) -> Result<String, WhepError> {
    let offer = gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Offer, offer);
    wait(
        |promise| webrtc.emit_by_name::<()>("set-remote-description", &[&offer, &promise]),
        "setting the offer",
    )?;
    let reply = wait(
        |promise| webrtc.emit_by_name::<()>("create-answer", &[&None::<gst::Structure>, &promise]),
        "making the answer",
    )?
    .ok_or_else(|| WhepError::Setup("making the answer: no reply".into()))?;
    let answer = reply
        .get::<gst_webrtc::WebRTCSessionDescription>("answer")
        .map_err(|_| WhepError::Offer("the offer cannot be answered (no common format)".into()))?;
    wait(
        |promise| webrtc.emit_by_name::<()>("set-local-description", &[&answer, &promise]),
        "setting the answer",
    )?;
    let deadline = Instant::now() + GATHER_TIMEOUT;
    while webrtc.property::<gst_webrtc::WebRTCICEGatheringState>("ice-gathering-state")
        != gst_webrtc::WebRTCICEGatheringState::Complete
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let local = webrtc
        .property::<Option<gst_webrtc::WebRTCSessionDescription>>("local-description")
        .ok_or_else(|| WhepError::Setup("no local description after the answer".into()))?;
    local
        .sdp()
        .as_text()
        .map_err(|e| WhepError::Setup(format!("the answer cannot be written: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The video section of an offer as Chromium makes it (abridged).
    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 102 103 106 107\r\nc=IN IP4 0.0.0.0\r\n\
        a=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n\
        a=rtpmap:96 VP8/90000\r\n\
        a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
        a=rtpmap:103 H264/90000\r\na=fmtp:103 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n\
        a=rtpmap:106 H264/90000\r\na=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
        a=rtpmap:107 H264/90000\r\na=fmtp:107 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f\r\n";

    #[test]
    fn the_streams_own_profile_is_chosen_in_packetization_mode_one() {
        gst::init().unwrap();
        let sdp = gst_sdp::SDPMessage::parse_buffer(OFFER.as_bytes()).unwrap();
        assert_eq!(pick_h264(&sdp, Some(0x64)).unwrap(), 107);
        assert_eq!(
            pick_h264(&sdp, Some(0x4d)).unwrap(),
            106,
            "constrained baseline next"
        );
        assert_eq!(pick_h264(&sdp, None).unwrap(), 106);
        let vp8_only = OFFER.split("a=rtpmap:102").next().unwrap().to_string();
        let sdp = gst_sdp::SDPMessage::parse_buffer(vp8_only.as_bytes()).unwrap();
        let error = pick_h264(&sdp, None).unwrap_err().to_string();
        assert!(
            error.contains("no H.264 in packetization mode 1"),
            "{error}"
        );
    }
}
