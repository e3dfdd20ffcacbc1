//! The control plane of the dialer: the REST API for campaigns, targets, calls and stats
//! (axum, OpenAPI from utoipa), its persistence on PostgreSQL or SQLite (sqlx) behind one
//! [`store::Store`], and the configuration shared by every `dialer` command. Later the
//! scheduler and recorder live here too. It never places calls itself: the data plane does.

pub mod api;
pub mod config;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

pub use config::Config;
pub use store::{Store, StoreError, StoreOptions};

/// Connects to the configured store and applies migrations.
pub async fn open_store(cfg: &Config, url: &str) -> Result<Store, StoreError> {
    let store = Store::connect(
        url,
        &StoreOptions {
            max_connections: cfg.store.max_connections,
            acquire_timeout: Duration::from_secs(cfg.store.acquire_timeout_sec),
        },
    )
    .await?;
    store.migrate().await?;
    Ok(store)
}

/// The API router over `store`.
pub fn app(cfg: &Config, store: Store) -> axum::Router {
    api::router(api::AppState {
        store,
        api: Arc::new(cfg.api.clone()),
    })
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
