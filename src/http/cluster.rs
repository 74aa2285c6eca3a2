//! `GET /api/v1/cluster`: the nodes alive (id, address, version, connections, last heartbeat)
//! and cluster totals. Without a backplane, the one node answering.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::Monitoring;
use crate::cluster::ClusterView;

pub(super) fn routes() -> Router<Monitoring> {
    Router::new().route("/api/v1/cluster", get(view))
}

async fn view(State(m): State<Monitoring>) -> Json<ClusterView> {
    Json(match &m.cluster {
        Some(cluster) => cluster.view(),
        None => ClusterView::single(&m.node.id, &m.node.address, &m.node.started_at, &m.registry),
    })
}
