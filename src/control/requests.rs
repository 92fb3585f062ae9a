//! What the control plane asks of the daemon, which owns the engine: reload every file
//! (SIGHUP), put or delete one pipeline (HTTP). The daemon's thread answers them one at a time,
//! so two writers never apply half of each other's change.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::pipeline::plan::Changes;

/// Requests waiting for the daemon; more than this and the sender is told to retry.
const PENDING: usize = 16;

pub enum Request {
    /// Re-read and apply every file (SIGHUP, `systemctl reload`).
    Reload {
        reply: Option<oneshot::Sender<Answer>>,
    },
    /// Validate `body` as pipeline `name`, write it into the pipelines directory, apply it.
    Put {
        name: String,
        body: String,
        reply: oneshot::Sender<Answer>,
    },
    /// Remove pipeline `name`'s file and apply that.
    Delete {
        name: String,
        reply: oneshot::Sender<Answer>,
    },
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Applied; `created` when a PUT added a pipeline rather than replacing one.
    Applied { changes: Changes, created: bool },
    /// Refused, with every error found (file and key in each); nothing changed.
    Invalid(Vec<String>),
    /// It uses what `http.writes` does not allow (file and key in each); nothing changed.
    Forbidden(Vec<String>),
    /// The file the pipeline would be written to holds something else; nothing changed.
    Conflict(String),
    /// No pipeline of that name.
    NotFound(String),
    /// Valid but could not be carried out (the file could not be written, say).
    Failed(String),
}

/// The sending side, held by the HTTP server and the signal handler.
#[derive(Clone)]
pub struct Requests(Sender<Request>);

impl Requests {
    pub fn new() -> (Self, Receiver<Request>) {
        let (sender, receiver) = crossbeam_channel::bounded(PENDING);
        (Self(sender), receiver)
    }

    /// Queues `request` without waiting; false when too many wait already or the daemon has
    /// stopped taking requests.
    pub fn offer(&self, request: Request) -> bool {
        match self.0.try_send(request) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                tracing::warn!("too many control requests waiting; this one was refused");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}
