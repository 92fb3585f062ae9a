//! The control plane: what runs on tokio, never on the frame path.
//!
//! - [`http`]: the HTTP server on `http.listen` (`/healthz`, `/readyz`, `/api/pipelines`,
//!   `/metrics`), reading the engine's shared [`EngineView`](crate::pipeline::engine::EngineView).
//! - [`connections`]: its connections, capped and timed so that no client can starve it;
//!   [`guard`]: the `Host` allow-list and the headers every response carries.
//! - [`writes`] and [`policy`]: pipelines put and deleted over HTTP, and what those may use.
//! - [`live`]: live viewing in browsers (WHEP sessions, fragmented MP4 for MSE, `/view/<name>`).
//! - [`metrics`]: the Prometheus text exposition of that view.
//! - [`signals`]: SIGINT/SIGTERM start a drain; a second one exits at once.
//! - [`systemd`]: `Type=notify` readiness, status, watchdog and stopping notifications.
//! - [`process`]: the process's own resources, for `/metrics`, and the bound on malloc's arenas.
//!
//! Nothing here touches frames or tensors: every number it serves is an atomic the frame path
//! already keeps, read without locking anything the frame path takes.

pub mod api;
pub mod connections;
pub mod guard;
pub mod http;
pub mod live;
pub mod metrics;
pub mod page;
pub mod policy;
pub mod process;
pub mod reads;
pub mod requests;
pub mod signals;
pub mod systemd;
pub mod writes;

pub use api::{Api, Writes};
pub use http::ControlServer;
