//! A context's own port: a listener on `127.0.0.1` whose every connection
//! belongs to that context. No `407` is ever sent there, so a preview's first
//! request may be one Chromium will not authenticate (a WebSocket, a service
//! worker's fetch after a restart). Releasing the context closes the listener
//! and every connection on it.

use std::net::SocketAddr;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;

use super::server;
use crate::policy::auth::{Context, OwnPort};
use crate::shared::Shared;

/// Binds a new port on `127.0.0.1` for `context` and serves it until the
/// context is released or the proxy stops. `place` is the port's place under
/// the cap of own ports, held as long as the listener lives.
pub(crate) fn open(
    shared: &Arc<Shared>,
    context: &Arc<Context>,
    place: OwnedSemaphorePermit,
) -> std::io::Result<OwnPort> {
    // Bound here, synchronously, so that the caller gets the port at once (napi calls in from Node's thread).
    let _runtime = crate::shared::runtime().enter();
    let listener = crate::shared::listen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let port = listener.local_addr()?.port();
    let (closed_tx, closed_rx) = std::sync::mpsc::sync_channel(0);
    let closed = parking_lot::Mutex::new(closed_rx);
    shared.tasks.spawn(accept_loop(shared.clone(), context.clone(), listener, place, closed_tx));
    Ok(OwnPort { port, closed })
}

async fn accept_loop(
    shared: Arc<Shared>,
    context: Arc<Context>,
    listener: TcpListener,
    place: OwnedSemaphorePermit,
    closed: SyncSender<()>,
) {
    // Released (or the proxy stopped): the listener closes with this task. Own ports share the
    // proxy's cap on client connections.
    server::accept_each(&shared, &listener, &context.revoked, |stream, slot| {
        let closer = context.revoked.child_token();
        let served = server::serve_owned_stream(shared.clone(), stream, closer, slot, context.clone());
        shared.tasks.spawn(served);
    })
    .await;
    // In this order: the port refuses connections before the release waiting on `closed` returns.
    drop(listener);
    drop(place);
    drop(closed);
}
