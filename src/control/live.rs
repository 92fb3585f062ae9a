//! Live viewing in browsers: WHEP sessions (WebRTC) and fragmented MP4 over HTTP (MSE), both
//! fed from the pipeline's [`LiveFeed`] (its own H.264, never encoded again), and the
//! full-screen page `/view/<name>` with the player script both pages share.
//!
//! | route | |
//! |---|---|
//! | `POST /api/pipelines/<name>/whep` | an SDP offer (`application/sdp`) → `201` with the answer and a `Location` |
//! | `DELETE /api/pipelines/<name>/whep/<id>` | ends that session |
//! | `GET /api/pipelines/<name>/live.mp4` | the live video as fragmented MP4, from a keyframe, one fragment per frame |
//! | `GET /view/<name>` | one pipeline's live view, full window |
//! | `GET /live.js` | the player: WebRTC, else MSE, else snapshots |
//!
//! Each pipeline takes at most `http.webrtc.max_viewers` viewers of both kinds together; one
//! more is answered `503` at once. A WebRTC session ends on `DELETE`, when its peer's
//! connection fails or closes (a page closed, ICE lost), when it stays disconnected for
//! [`DISCONNECTED_GRACE`], when a connected peer sends nothing for [`SILENCE_TIMEOUT`] (a
//! browser killed), when it never connects within [`CONNECT_TIMEOUT`], and when its pipeline
//! stops. With `http.view_token_file` set, watching needs that token (or the write token) as
//! `Authorization: Bearer`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Api;
use crate::media::fmp4::Fmp4Muxer;
use crate::media::live::{Delivery, EncodedUnit, Refusal, Viewer, ViewerKind};
use crate::media::webrtc::{self, IceServers, PeerState, WebrtcSession, WhepError};
use crate::pipeline::view::PipelineHandle;
use crate::preflight::files::read_token;

/// A WebRTC session that has not connected by then is ended.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A session whose peer stays disconnected this long is ended (a page closed without
/// `DELETE`, a network gone).
pub const DISCONNECTED_GRACE: Duration = Duration::from_secs(5);
/// A connected session whose peer sent nothing (browsers send RTCP reports every second
/// or so) for this long is ended: a browser killed, or gone off the network.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the sessions are looked over.
const REAP_INTERVAL: Duration = Duration::from_millis(500);
/// Access units an MSE viewer's queue holds (a second at 30 frames/s) before it loses one.
const MSE_QUEUE: usize = 30;
/// How long `live.mp4` waits for the keyframe it starts with.
const FIRST_KEYFRAME_WAIT: Duration = Duration::from_secs(5);
const PLAYER: &str = include_str!("live.js");

/// What live viewing is configured with (`http.webrtc`, the tokens).
#[derive(Debug, Clone)]
pub struct LiveSettings {
    pub max_viewers: usize,
    pub ice: IceServers,
    pub view_token_file: Option<PathBuf>,
    /// The write token is good for watching too.
    pub write_token_file: Option<PathBuf>,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            max_viewers: crate::config::WebrtcConfig::default().max_viewers,
            ice: IceServers::default(),
            view_token_file: None,
            write_token_file: None,
        }
    }
}

impl LiveSettings {
    pub fn of(http: &crate::config::HttpConfig) -> Self {
        Self {
            max_viewers: http.webrtc.max_viewers.max(1),
            ice: IceServers {
                stun: http.webrtc.stun.clone(),
                turn: http.webrtc.turn.clone(),
            },
            view_token_file: http.view_token_file.clone(),
            write_token_file: http.token_file.clone(),
        }
    }
}

/// Live viewing's state in the control plane.
#[derive(Clone, Default)]
pub struct Live {
    pub settings: Arc<LiveSettings>,
    pub sessions: Arc<WhepSessions>,
}

impl Live {
    pub fn new(settings: LiveSettings) -> Self {
        Self {
            settings: Arc::new(settings),
            sessions: Arc::default(),
        }
    }
}

struct Entry {
    pipeline: String,
    session: WebrtcSession,
    disconnected_since: Option<Instant>,
}

/// The WebRTC sessions, by id.
pub struct WhepSessions {
    sessions: Mutex<HashMap<String, Entry>>,
    /// Whether the task that ends sessions runs (it starts with the first session).
    reaping: std::sync::atomic::AtomicBool,
    /// Sessions ended, by why: `deleted`, `failed`, `closed`, `disconnected`, `silent`,
    /// `timeout`, `stopped` (the pipeline), `error`.
    ended: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    started: AtomicU64,
    /// Offers being answered now: each holds a blocking thread for up to a few seconds (ICE
    /// gathering), so more than [`NEGOTIATIONS`] at once are refused rather than queued.
    negotiating: Arc<tokio::sync::Semaphore>,
}

/// WHEP offers answered at once.
const NEGOTIATIONS: usize = 4;

impl Default for WhepSessions {
    fn default() -> Self {
        Self {
            sessions: Mutex::default(),
            reaping: std::sync::atomic::AtomicBool::new(false),
            ended: Mutex::default(),
            started: AtomicU64::new(0),
            negotiating: Arc::new(tokio::sync::Semaphore::new(NEGOTIATIONS)),
        }
    }
}

impl WhepSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions started so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Sessions ended so far, by why.
    pub fn ended(&self) -> Vec<(&'static str, u64)> {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended.iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn insert(self: &Arc<Self>, id: String, pipeline: &str, session: WebrtcSession) {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Entry {
                pipeline: pipeline.to_string(),
                session,
                disconnected_since: None,
            },
        );
        if !self.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Ends `id` of `pipeline`; false when there is no such session.
    fn end(&self, pipeline: &str, id: &str, why: &'static str) -> bool {
        let entry = {
            let mut sessions = self.lock();
            match sessions.get(id) {
                Some(entry) if entry.pipeline == pipeline => sessions.remove(id),
                _ => None,
            }
        };
        match entry {
            Some(entry) => {
                self.count(why);
                close(entry);
                true
            }
            None => false,
        }
    }

    fn count(&self, why: &'static str) {
        *self
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(why)
            .or_default() += 1;
    }

    /// Ends the sessions that are over; see the module's comment.
    fn sweep(&self) {
        let now = Instant::now();
        let over: Vec<(Entry, &'static str)> = {
            let mut sessions = self.lock();
            let mut over = Vec::new();
            let ids: Vec<String> = sessions.keys().cloned().collect();
            for id in ids {
                let Some(entry) = sessions.get_mut(&id) else {
                    continue;
                };
                let why = if !entry.session.attached() {
                    Some("stopped")
                } else if let Some(error) = entry.session.poll() {
                    tracing::warn!(pipeline = %entry.pipeline, %error, "WebRTC viewer failed");
                    Some("error")
                } else {
                    match entry.session.state() {
                        PeerState::Failed => Some("failed"),
                        PeerState::Closed => Some("closed"),
                        PeerState::Disconnected => {
                            let since = *entry.disconnected_since.get_or_insert(now);
                            (now.duration_since(since) >= DISCONNECTED_GRACE)
                                .then_some("disconnected")
                        }
                        PeerState::New | PeerState::Connecting => {
                            (entry.session.age() >= CONNECT_TIMEOUT).then_some("timeout")
                        }
                        PeerState::Connected => {
                            entry.disconnected_since = None;
                            (entry.session.silence() >= SILENCE_TIMEOUT).then_some("silent")
                        }
                    }
                };
                if let Some(why) = why
                    && let Some(entry) = sessions.remove(&id)
                {
                    over.push((entry, why));
                }
            }
            over
        };
        for (entry, why) in over {
            tracing::info!(pipeline = %entry.pipeline, reason = why, "WebRTC viewer ended");
            self.count(why);
            close(entry);
        }
    }
}

/// Stops a session's pipeline off the async threads (reaching `Null` may wait on its
/// streaming threads).
fn close(entry: Entry) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(entry))),
        Err(_) => drop(entry),
    }
}

async fn reap(sessions: Weak<WhepSessions>) {
    let mut interval = tokio::time::interval(REAP_INTERVAL);
    loop {
        interval.tick().await;
        let Some(sessions) = sessions.upgrade() else {
            return;
        };
        sessions.sweep();
    }
}

impl Drop for WhepSessions {
    fn drop(&mut self) {
        for (_, entry) in self.lock().drain() {
            drop(entry);
        }
    }
}

fn problem(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// `None` when the request may watch; otherwise the response that says why not.
pub(super) fn refuse_viewer(settings: &LiveSettings, headers: &HeaderMap) -> Option<Response> {
    let view = settings.view_token_file.as_ref()?;
    let offered = super::writes::bearer_token(headers);
    let accepted = [Some(view), settings.write_token_file.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|file| read_token(file).ok())
        .any(|token| {
            offered.is_some_and(|offered| super::writes::same(offered.as_bytes(), token.as_bytes()))
        });
    if accepted {
        return None;
    }
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        "watching needs a valid bearer token (http.view_token_file)",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"visiond\""),
    );
    Some(response)
}

/// The pipeline `name`, if it has video to watch; otherwise why not (a 404's message).
fn watchable(api: &Api, name: &str) -> Result<Arc<PipelineHandle>, String> {
    let Some(pipeline) = api.view.current().pipeline(name).cloned() else {
        return Err(format!("no pipeline named '{name}'"));
    };
    if !pipeline.video {
        return Err(format!(
            "pipeline '{name}' publishes no video, so it has no live view"
        ));
    }
    Ok(pipeline)
}

fn refused(name: &str, refusal: &Refusal) -> Response {
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("pipeline '{name}' takes no more viewers: {refusal}"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// A fresh session id: 128 random bits, so one viewer cannot guess another's.
fn session_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// `POST /api/pipelines/<name>/whep`: answers an SDP offer with a session.
pub async fn whep_offer(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let live = api.live.clone();
    if let Some(response) = refuse_viewer(&live.settings, &headers) {
        return response;
    }
    let pipeline = match watchable(&api, &name) {
        Ok(pipeline) => pipeline,
        Err(message) => return problem(StatusCode::NOT_FOUND, &message),
    };
    let is_sdp = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/sdp"));
    if !is_sdp {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a WHEP offer is sent as Content-Type: application/sdp",
        );
    }
    let Ok(offer) = String::from_utf8(body.to_vec()) else {
        return problem(StatusCode::BAD_REQUEST, "the offer is not UTF-8 text");
    };
    // A full pipeline is refused before a viewer pipeline is built for nothing (adding the
    // viewer checks again, atomically).
    let max = live.settings.max_viewers;
    if pipeline.stats.live.viewer_count() >= max {
        return refused(&name, &Refusal::Full { max });
    }
    let Ok(permit) = live.sessions.negotiating.clone().try_acquire_owned() else {
        let mut response = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("{NEGOTIATIONS} WebRTC offers are being answered already; try again"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let settings = live.settings.clone();
    let feed = pipeline.stats.live.clone();
    let name_for_answer = name.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        webrtc::answer(
            &offer,
            &feed,
            settings.max_viewers,
            &settings.ice,
            &name_for_answer,
        )
    })
    .await;
    let (session, answer) = match answered {
        Ok(Ok(answered)) => answered,
        Ok(Err(WhepError::Offer(reason))) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!("pipeline '{name}': {reason}"),
            );
        }
        Ok(Err(WhepError::Refused(refusal))) => return refused(&name, &refusal),
        Ok(Err(error @ WhepError::Setup(_))) => {
            tracing::warn!(pipeline = %name, %error, "WebRTC viewer refused");
            return problem(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string());
        }
        Err(_) => {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the WebRTC session could not be set up: its task failed",
            );
        }
    };
    let id = session_id();
    live.sessions.insert(id.clone(), &name, session);
    tracing::info!(pipeline = %name, "WebRTC viewer joined");
    let location = format!("/api/pipelines/{}/whep/{id}", encode_segment(&name));
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_string()),
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        answer,
    )
        .into_response()
}

/// A path segment with what a URL cannot carry as it is percent-encoded.
fn encode_segment(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `DELETE /api/pipelines/<name>/whep/<id>`: the viewer leaves.
pub async fn whep_delete(
    State(api): State<Api>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = refuse_viewer(&api.live.settings, &headers) {
        return response;
    }
    if api.live.sessions.end(&name, &id, "deleted") {
        tracing::info!(pipeline = %name, "WebRTC viewer left");
        StatusCode::OK.into_response()
    } else {
        problem(
            StatusCode::NOT_FOUND,
            &format!("pipeline '{name}' has no WebRTC session '{id}'"),
        )
    }
}

/// An MSE viewer's end of the feed: a bounded queue the HTTP response empties.
struct MseViewer {
    queue: tokio::sync::mpsc::Sender<EncodedUnit>,
}

impl Viewer for MseViewer {
    fn deliver(&mut self, unit: &EncodedUnit) -> Delivery {
        use tokio::sync::mpsc::error::TrySendError;
        match self.queue.try_send(unit.clone()) {
            Ok(()) => Delivery::Taken,
            Err(TrySendError::Full(_)) => Delivery::Full,
            Err(TrySendError::Closed(_)) => Delivery::Gone,
        }
    }
}

/// Muxes units into fragments, with timestamps that a unit without any still gets.
struct Fragmenter {
    muxer: Fmp4Muxer,
    last_pts: Option<u64>,
}

impl Fragmenter {
    fn push(&mut self, unit: &EncodedUnit) -> Result<Vec<Bytes>, String> {
        let buffer = &unit.buffer;
        let duration = buffer.duration().map(|d| d.nseconds());
        let pts = buffer
            .pts()
            .map(|p| p.nseconds())
            .or_else(|| Some(self.last_pts? + duration.unwrap_or(33_333_333)))
            .unwrap_or(0);
        self.last_pts = Some(pts);
        let dts = buffer.dts().map(|d| d.nseconds());
        let map = buffer
            .map_readable()
            .map_err(|_| "an encoded frame could not be read".to_string())?;
        self.muxer
            .push(&map, pts, dts, duration)
            .map_err(|e| e.to_string())
    }
}

/// `GET /api/pipelines/<name>/live.mp4`: the pipeline's video as fragmented MP4, starting at
/// a keyframe; `Content-Type` names the codec (`video/mp4; codecs="avc1…"`) for MSE.
pub async fn live_mp4(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = refuse_viewer(&api.live.settings, &headers) {
        return response;
    }
    let pipeline = match watchable(&api, &name) {
        Ok(pipeline) => pipeline,
        Err(message) => return problem(StatusCode::NOT_FOUND, &message),
    };
    let (queue, mut units) = tokio::sync::mpsc::channel(MSE_QUEUE);
    let handle = match pipeline.stats.live.add(
        ViewerKind::Mse,
        Box::new(MseViewer { queue }),
        api.live.settings.max_viewers,
    ) {
        Ok(handle) => handle,
        Err(refusal) => return refused(&name, &refusal),
    };
    let mut fragmenter = Fragmenter {
        muxer: Fmp4Muxer::new(),
        last_pts: None,
    };
    // The response starts once the init segment is made, so that its type names the codec.
    let deadline = tokio::time::Instant::now() + FIRST_KEYFRAME_WAIT;
    let first = loop {
        let unit = match tokio::time::timeout_at(deadline, units.recv()).await {
            Ok(Some(unit)) => unit,
            Ok(None) => {
                return problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("pipeline '{name}' stopped"),
                );
            }
            Err(_) => {
                let mut response = problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "pipeline '{name}' sent no keyframe within {} s",
                        FIRST_KEYFRAME_WAIT.as_secs()
                    ),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
        };
        match fragmenter.push(&unit) {
            Ok(chunks) if !chunks.is_empty() => break chunks,
            Ok(_) => continue,
            Err(error) => {
                return problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("pipeline '{name}': {error}"),
                );
            }
        }
    };
    let codec = fragmenter
        .muxer
        .codec()
        .unwrap_or_else(|| "avc1.42e01f".into());
    tracing::info!(pipeline = %name, "MSE viewer joined");
    let stream = futures_util::stream::unfold(
        (units, fragmenter, handle, Some(first), name),
        |(mut units, mut fragmenter, handle, pending, name)| async move {
            if let Some(chunks) = pending {
                let body = chunks.concat();
                return Some((
                    Ok::<_, std::io::Error>(Bytes::from(body)),
                    (units, fragmenter, handle, None, name),
                ));
            }
            loop {
                let Some(unit) = units.recv().await else {
                    tracing::info!(pipeline = %name, "MSE viewer ended: the pipeline stopped");
                    return None;
                };
                match fragmenter.push(&unit) {
                    Ok(chunks) if chunks.is_empty() => continue,
                    Ok(chunks) => {
                        return Some((
                            Ok(Bytes::from(chunks.concat())),
                            (units, fragmenter, handle, None, name),
                        ));
                    }
                    Err(error) => {
                        tracing::warn!(pipeline = %name, %error, "MSE viewer ended");
                        return None;
                    }
                }
            }
        },
    );
    (
        [
            (
                header::CONTENT_TYPE,
                format!("video/mp4; codecs=\"{codec}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `GET /view/<name>`: one pipeline's live view, full window.
pub async fn view_page(State(api): State<Api>, Path(name): Path<String>) -> Response {
    if api.view.current().pipeline(&name).is_none() {
        return problem(
            StatusCode::NOT_FOUND,
            &format!("no pipeline named '{name}'"),
        );
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                super::page::view_content_security_policy(),
            ),
        ],
        super::page::VIEW_PAGE,
    )
        .into_response()
}

/// `GET /live.js`: the player both pages load.
pub async fn player() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PLAYER,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded_in_a_location() {
        assert_eq!(encode_segment("cam-1"), "cam-1");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }
}
