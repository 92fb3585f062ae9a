//! What the HTTP handlers serve from: the engine's view, and for the write endpoints the
//! daemon's request queue and the token file.

use std::path::PathBuf;

use axum::extract::FromRef;

use super::requests::Requests;
use crate::pipeline::view::SharedView;

/// The handlers' state.
#[derive(Clone)]
pub struct Api {
    pub view: SharedView,
    /// `None`: writes are off (no daemon to apply them, or no token configured).
    pub writes: Option<Writes>,
    /// Live viewing (WebRTC sessions, MSE) and its settings.
    pub live: super::live::Live,
}

/// The write endpoints' needs.
#[derive(Clone)]
pub struct Writes {
    pub requests: Requests,
    /// Read on every write, so a rotated token takes effect without a restart.
    pub token_file: PathBuf,
}

impl From<SharedView> for Api {
    fn from(view: SharedView) -> Self {
        Self {
            view,
            writes: None,
            live: super::live::Live::default(),
        }
    }
}

impl FromRef<Api> for SharedView {
    fn from_ref(api: &Api) -> Self {
        api.view.clone()
    }
}
