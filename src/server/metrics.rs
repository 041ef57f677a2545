//! `GET /metrics`: the repository's Prometheus metrics (core `metrics`),
//! for `lifeboat serve` (behind a token of any role) and the daemon.

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use lifeboat_core::config::Config;

/// What a scrape reads: the config (RPO thresholds) and the repository.
#[derive(Clone)]
pub struct MetricsSource {
    pub config: Arc<Config>,
    pub root: PathBuf,
}

/// Which VMs a scrape may see (None: all).
pub type Only = Option<Arc<dyn Fn(&str) -> bool + Send + Sync>>;

impl MetricsSource {
    pub async fn answer(&self, only: Only) -> Response {
        let (config, root) = (self.config.clone(), self.root.clone());
        let text = tokio::task::spawn_blocking(move || {
            lifeboat_core::metrics::render_for(&config, &root, chrono::Utc::now(), only.as_deref())
        })
        .await;
        match text {
            Ok(Ok(t)) => (
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                t,
            )
                .into_response(),
            Ok(Err(e)) => {
                tracing::error!("metrics: {e}");
                (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}\n")).into_response()
            }
            Err(e) => {
                (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}\n")).into_response()
            }
        }
    }
}

/// A small server with only `/metrics` (the daemon's `--metrics-listen`).
pub async fn serve_metrics(
    listen: std::net::SocketAddr,
    source: MetricsSource,
    shutdown: lifeboat_core::jobs::CancellationToken,
) -> lifeboat_core::Result<std::net::SocketAddr> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let s = source.clone();
            async move { s.answer(None).await }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        lifeboat_core::Error::BadInput(format!("cannot listen on {listen} for metrics: {e}"))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| lifeboat_core::Error::Internal(e.to_string()))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(addr)
}
