//! The benchmark baseline: the same chat contract as wsmon (personal reply, broadcast to
//! everyone, leave notice) on axum with the same buffer sizes and bounded per-connection queues,
//! and no monitoring at all: no registry, metrics, spans or stats.
//!
//! Run: `cargo run --release --example bare-chat -- 127.0.0.1:8100`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

#[derive(Clone, Default)]
struct Room {
    members: Arc<RwLock<HashMap<u64, mpsc::Sender<Utf8Bytes>>>>,
    next_id: Arc<AtomicU64>,
}

impl Room {
    fn publish(&self, text: Utf8Bytes, except: Option<u64>) {
        for (id, tx) in self.members.read().unwrap().iter() {
            if Some(*id) != except {
                let _ = tx.try_send(text.clone());
            }
        }
    }
}

async fn upgrade(
    State(room): State<Room>,
    Path(client_id): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.read_buffer_size(1024)
        .write_buffer_size(8192)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| session(socket, room, client_id))
}

async fn session(socket: WebSocket, room: Room, client_id: String) {
    let id = room.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(256);
    room.members.write().unwrap().insert(id, tx.clone());
    let (mut sink, mut stream) = socket.split();
    let writer = async {
        let mut batch = Vec::with_capacity(64);
        while rx.recv_many(&mut batch, 64).await > 0 {
            for text in batch.drain(..) {
                if sink.feed(Message::Text(text)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    };
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Text(text) => {
                    let _ = tx.try_send(format!("You sent: {}", text.as_str()).into());
                    room.publish(
                        format!("Client #{client_id} says: {}", text.as_str()).into(),
                        None,
                    );
                }
                Message::Close(_) | Message::Binary(_) => return,
                _ => {}
            }
        }
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
    room.members.write().unwrap().remove(&id);
    room.publish(
        format!("Client #{client_id} left the chat").into(),
        Some(id),
    );
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8100".into());
    let app = Router::new()
        .route("/ws/{client_id}", get(upgrade))
        .with_state(Room::default());
    let listener = tokio::net::TcpListener::bind(&addr).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    println!("bare chat on ws://{addr}/ws/<client_id>");
    axum::serve(listener, app).await
}
