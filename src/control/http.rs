//! The control plane's HTTP server (axum on tokio), bound to `http.listen`.
//!
//! | path | answer |
//! |---|---|
//! | `GET /` | the status page (`status.html`): every pipeline, its rates and latest frame |
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 when every pipeline is `playing` or `finished`, else 503; JSON either way |
//! | `GET /api/pipelines` | JSON array, one object per pipeline ([`reads::PipelineStatus`]) |
//! | `GET /api/pipelines/<name>` | one pipeline; `PUT` and `DELETE` manage it ([`super::writes`]) |
//! | `GET /api/pipelines/<name>/snapshot.jpg` | its latest published frame, as a JPEG |
//! | `POST /api/pipelines/<name>/whep`, `DELETE …/whep/<id>` | a WebRTC viewer (WHEP) ([`super::live`]) |
//! | `GET /api/pipelines/<name>/live.mp4` | its live video as fragmented MP4, for MSE |
//! | `GET /view/<name>` | one pipeline's live view; `GET /live.js` the player it and `/` use |
//! | `GET /metrics` | Prometheus text format 0.0.4 ([`super::metrics`]) |
//!
//! Other paths are 404 and other methods 405. Handlers only read the shared
//! `EngineView`; they never block on the frame path. Every response is `nosniff`; with
//! `http.allowed_hosts`, a request for another host is refused ([`super::guard`]).
//! Connections are capped and timed ([`super::connections`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Extension, Router};
use tokio::net::TcpListener;

use super::api::Api;
use super::connections::{self, ConnectionLimits, ConnectionStats};
use super::guard::{self, AllowedHosts};
use super::{live, reads, writes};
use crate::config::HttpConfig;

/// The control plane's listening socket, bound before it serves (so a taken port is an error
/// at start, and port 0 tells its real port before any request).
pub struct ControlServer {
    listener: TcpListener,
    address: SocketAddr,
    limits: ConnectionLimits,
    hosts: AllowedHosts,
}

impl ControlServer {
    /// Binds `address` (port 0 picks a free port), with the default `http` settings.
    pub async fn bind(address: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        Ok(Self {
            listener,
            address,
            limits: ConnectionLimits::default(),
            hosts: AllowedHosts::default(),
        })
    }

    /// Takes the connection limits and the allowed hosts from `http`.
    pub fn configure(self, http: &HttpConfig) -> Self {
        Self {
            limits: ConnectionLimits::of(http),
            hosts: AllowedHosts::new(http.allowed_hosts.as_deref()),
            ..self
        }
    }

    /// The bound address, with the real port when 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves `api` until `shutdown` completes, then stops accepting, lets requests in
    /// flight finish and closes idle connections. Tests pass their own `shutdown`.
    pub async fn serve(
        self,
        api: impl Into<Api>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(address = %self.address, "control plane listening");
        let stats = Arc::new(ConnectionStats::new(self.limits.max_connections));
        let routes = router(api.into(), self.hosts, stats.clone());
        connections::serve(self.listener, routes, self.limits, stats, shutdown).await;
        tracing::info!(address = %self.address, "control plane stopped");
        Ok(())
    }
}

/// The routes, on `api`; `/metrics` also reports `connections`.
pub fn router(api: Api, hosts: AllowedHosts, connections: Arc<ConnectionStats>) -> Router {
    Router::new()
        .route("/", get(reads::status_page))
        .route("/healthz", get(reads::healthz))
        .route("/readyz", get(reads::readyz))
        .route("/api/pipelines", get(reads::pipelines))
        .route(
            "/api/pipelines/{name}",
            get(writes::get_pipeline)
                .put(writes::put_pipeline)
                .delete(writes::delete_pipeline),
        )
        .route("/api/pipelines/{name}/snapshot.jpg", get(reads::snapshot))
        .route(
            "/api/pipelines/{name}/whep",
            axum::routing::post(live::whep_offer),
        )
        .route(
            "/api/pipelines/{name}/whep/{id}",
            axum::routing::delete(live::whep_delete),
        )
        .route("/api/pipelines/{name}/live.mp4", get(live::live_mp4))
        .route("/view/{name}", get(live::view_page))
        .route("/live.js", get(live::player))
        .route("/metrics", get(reads::metrics))
        .fallback(reads::not_found)
        .layer(DefaultBodyLimit::max(writes::BODY_LIMIT))
        .layer(Extension(connections))
        .layer(axum::middleware::from_fn_with_state(hosts, guard::guard))
        .with_state(api)
}
