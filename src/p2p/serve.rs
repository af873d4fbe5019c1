//! The accept loop of one cluster identity, in place of iroh's `Router`:
//! each incoming connection first takes a handshake slot from the gate
//! (`Gate::admit_handshake`: capped, with a Retry for unproved sources
//! under load), holds it until its handshake is decided (the gate's hook
//! runs at its end) or `HANDSHAKE_TIMEOUT` passes, then goes to the
//! handler of its ALPN. The `Router` has no place to hold such a slot, so
//! a flood of handshakes (strangers' fresh keys, or handshakes that never
//! finish) made the daemon hold a connection's state for each.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use iroh::Endpoint;
use iroh::endpoint::Incoming;
use iroh::protocol::DynProtocolHandler;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

use super::gate::{Gate, HandshakeSlot};

/// How long a handshake may hold its slot: a relayed one takes a few round
/// trips; one that is not done by then is given up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Handlers = HashMap<Vec<u8>, Arc<dyn DynProtocolHandler>>;

/// Which handler serves each ALPN, before the loop starts.
pub struct ServerBuilder {
    endpoint: Endpoint,
    gate: Gate,
    handlers: Handlers,
}

impl ServerBuilder {
    pub fn new(endpoint: Endpoint, gate: Gate) -> ServerBuilder {
        ServerBuilder {
            endpoint,
            gate,
            handlers: HashMap::new(),
        }
    }

    /// Serves connections for `alpn` (one the endpoint was bound with)
    /// with `handler`.
    pub fn accept(mut self, alpn: &[u8], handler: impl DynProtocolHandler) -> ServerBuilder {
        self.handlers.insert(alpn.to_vec(), Arc::new(handler));
        self
    }

    pub fn spawn(self) -> Server {
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(run(self.endpoint, self.gate, self.handlers, stop.clone()));
        Server {
            stop,
            task: Some(task),
        }
    }
}

/// The running loop; dropping it aborts the loop and its connections.
pub struct Server {
    stop: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Stops accepting, awaits every handler's `shutdown` (the exec
    /// handler lets running commands finish), then ends what is left and
    /// closes the endpoint.
    pub async fn shutdown(mut self) {
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn run(endpoint: Endpoint, gate: Gate, handlers: Handlers, stop: Arc<Notify>) {
    let handlers = Arc::new(handlers);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.notified() => break,
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = ended
                    && e.is_panic()
                {
                    tracing::error!("a connection's task panicked: {e}");
                }
            }
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Some((incoming, slot)) = gate.admit_handshake(incoming) else {
                    continue;
                };
                connections.spawn(serve(incoming, slot, handlers.clone()));
            }
        }
    }
    let mut shutdowns = JoinSet::new();
    for handler in handlers.values() {
        let handler = handler.clone();
        shutdowns.spawn(async move { handler.shutdown().await });
    }
    shutdowns.join_all().await;
    connections.abort_all();
    endpoint.close().await;
    while connections.join_next().await.is_some() {}
}

/// One incoming connection: its handshake (holding `slot`), then its
/// handler.
async fn serve(incoming: Incoming, slot: HandshakeSlot, handlers: Arc<Handlers>) {
    let handshake = async {
        let mut accepting = incoming.accept().ok()?;
        let alpn = accepting.alpn().await.ok()?;
        let handler = handlers.get(&alpn)?.clone();
        // The gate's hook decides here, at the end of the handshake.
        let conn = handler.on_accepting(accepting).await.ok()?;
        Some((handler, conn))
    };
    let decided = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await;
    drop(slot);
    let Ok(Some((handler, conn))) = decided else {
        // Refused by the gate (and logged there), given up, or broken.
        return;
    };
    let peer = conn.remote_id();
    if let Err(e) = handler.accept(conn).await {
        tracing::debug!("a connection of {} ended: {e:#}", peer.fmt_short());
    }
}
