//! One cluster identity running in the daemon: its endpoint with the gate
//! of its cluster, the `Cluster` handle, its accept loop (the gate's cap
//! on handshakes, then one handler per ALPN: exec, config, forward, and
//! join on a CM) and its role's config-sync tasks (the CM's pusher, or a
//! machine's fetches and the watch on its config's age).

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::config::NetworkSettings;
use crate::exec::server::ExecHandler;
use crate::forward::host::ForwardHandler;
use crate::home::{ClusterDir, Role};
use crate::join::server::JoinHandler;
use crate::p2p::gate::Gate;
use crate::p2p::serve::{Server, ServerBuilder};
use crate::p2p::{
    self, CONFIG_ALPN, EXEC_ALPN, FORWARD_ALPN, JOIN_ALPN, Pool, RECORD_ALPN, RelayChoice,
};
use crate::sync;

pub struct RunningCluster {
    pub cluster: Arc<Cluster>,
    pub port: u16,
    /// The relay its endpoint was bound with; another one needs a restart.
    pub relay: RelayChoice,
    server: Server,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningCluster {
    pub async fn start(
        c: ClusterDir,
        net: &NetworkSettings,
        changed: Arc<Notify>,
    ) -> anyhow::Result<RunningCluster> {
        let port = net.ports.get(&c.alias).copied().unwrap_or(0);
        let mut alpns = vec![
            EXEC_ALPN.to_vec(),
            CONFIG_ALPN.to_vec(),
            FORWARD_ALPN.to_vec(),
            RECORD_ALPN.to_vec(),
        ];
        let gate = Gate::new(&c.alias, c.cm_id52, None);
        // A CM lets strangers join with an invite (and do nothing else).
        if c.role == Role::ClusterManager {
            alpns.push(JOIN_ALPN.to_vec());
            gate.open_joins();
        }
        let relay = RelayChoice::resolve(net, c.relay.as_ref());
        let endpoint = bind_retrying(&c, net, &relay, port, alpns, &gate).await?;
        let role = c.role;
        let alias = c.alias.clone();
        let pool = Pool::new(&relay);
        let cluster = Cluster::start(c, endpoint.clone(), pool, gate.clone(), changed).await?;
        let mut server = ServerBuilder::new(endpoint, gate);
        if role == Role::ClusterManager {
            server = server.accept(JOIN_ALPN, JoinHandler::new(cluster.clone()));
        }
        let server = server
            .accept(EXEC_ALPN, ExecHandler::new(cluster.clone()))
            .accept(
                FORWARD_ALPN,
                ForwardHandler {
                    cluster: cluster.clone(),
                },
            )
            .accept(
                CONFIG_ALPN,
                sync::ConfigHandler {
                    cluster: cluster.clone(),
                },
            )
            .accept(
                RECORD_ALPN,
                crate::record::store::RecordHandler::new(cluster.clone()),
            )
            .spawn();
        let tasks = match role {
            Role::ClusterManager => {
                let dialer = sync::handover::Dialer {
                    net: net.clone(),
                    relay: relay.clone(),
                };
                vec![tokio::spawn(sync::cm::pusher(cluster.clone(), dialer))]
            }
            Role::Machine | Role::Waiting => {
                let ages = cluster.clone();
                vec![
                    tokio::spawn(sync::machine::follow_cm(cluster.clone())),
                    tokio::spawn(async move { ages.watch_config_age().await }),
                ]
            }
        };
        tracing::info!(
            malai_cluster = %alias,
            "cluster {alias} up as {} on {:?}, id52 {}, relay {}",
            role.as_str(),
            cluster.endpoint().bound_sockets(),
            cluster.id52(),
            relay
        );
        Ok(RunningCluster {
            cluster,
            port,
            relay,
            server,
            tasks,
        })
    }

    /// Stops accepting, lets running commands finish (the exec handler's
    /// shutdown), closes the endpoint.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.server.shutdown().await;
    }
}

/// How long a cluster restarted on its fixed port (a new key, role or
/// relay) waits for the endpoint it replaces to let go of the port: that
/// endpoint's socket closes when its last handle (a task, a D-Bus object
/// that still held the cluster) is dropped, moments after it stopped.
const PORT_RELEASE: std::time::Duration = std::time::Duration::from_secs(5);

/// `p2p::bind`, retried while a fixed port is still held by the endpoint
/// this one replaces.
async fn bind_retrying(
    c: &ClusterDir,
    net: &NetworkSettings,
    relay: &RelayChoice,
    port: u16,
    alpns: Vec<Vec<u8>>,
    gate: &Gate,
) -> anyhow::Result<iroh::Endpoint> {
    let deadline = tokio::time::Instant::now() + PORT_RELEASE;
    loop {
        match p2p::bind(&c.identity, net, relay, port, alpns.clone(), Some(gate)).await {
            Ok(endpoint) => return Ok(endpoint),
            Err(e)
                if port != 0
                    && tokio::time::Instant::now() < deadline
                    && format!("{e:#}").contains("Address already in use") =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
