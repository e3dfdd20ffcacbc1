//! Prompts served over HTTP as the control plane's API serves them
//! (`/api/v1/prompts/{id}/audio`), on a thread of its own.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

/// Serves `prompts`; the base URL.
pub fn serve(prompts: HashMap<Uuid, Vec<u8>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let prompts = Arc::new(prompts);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            use axum::extract::{Path, State};
            let app = axum::Router::new()
                .route(
                    "/api/v1/prompts/{id}/audio",
                    axum::routing::get(
                        |State(p): State<Arc<HashMap<Uuid, Vec<u8>>>>, Path(id): Path<Uuid>| async move {
                            match p.get(&id) {
                                Some(b) => (axum::http::StatusCode::OK, b.clone()),
                                None => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
                            }
                        },
                    ),
                )
                .with_state(prompts);
            let l = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(l, app).await.expect("serve");
        });
    });
    format!("http://{addr}")
}
