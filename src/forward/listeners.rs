//! The daemon's forward listeners: one per `[forward.NAME]` of malai.toml
//! and the HTTP-by-name listener, each on the socket systemd passed under
//! its name (`FileDescriptorName=NAME`, `http`) or else bound here.
//! Reconciled with malai.toml at start and on every rescan: a new forward
//! starts, a removed one stops, one whose service changed keeps its socket
//! and carries new connections to the new service. A listener that cannot
//! start is reported (logged, and listed by `malai rescan`) without
//! stopping the daemon.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::client::{self, Clusters, Target};
use crate::config::LocalConfig;
use crate::config::local::HTTP_SOCKET_NAME;
use crate::sockets::Inherited;

pub struct Listeners {
    clusters: Clusters,
    forwards: BTreeMap<String, RunningForward>,
    http: Option<Running>,
    /// The forwards as the status page shows them, kept at each reconcile.
    view: Forwards,
}

/// What the status page lists of the forwards.
pub type Forwards = Arc<RwLock<Vec<crate::status_page::ForwardView>>>;

/// A listener's task and where its socket came from.
struct Running {
    /// `None`: passed by systemd (kept for as long as it is wanted at all,
    /// since only systemd could give it again).
    bound: Option<SocketAddr>,
    task: JoinHandle<()>,
}

struct RunningForward {
    running: Running,
    target: Arc<RwLock<Target>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a listener's socket comes from, once claimed.
enum Socket {
    Inherited(std::net::TcpListener),
    Bind(SocketAddr),
}

impl Listeners {
    pub fn new(clusters: Clusters) -> Listeners {
        Listeners {
            clusters,
            forwards: BTreeMap::new(),
            http: None,
            view: Forwards::default(),
        }
    }

    /// Makes the running listeners match `local`; `sockets` are systemd's
    /// (at start only). Returns one line per listener that could not start.
    pub async fn reconcile(
        &mut self,
        local: &LocalConfig,
        mut sockets: Option<&mut Inherited>,
    ) -> Vec<String> {
        let mut problems = Vec::new();

        // Forwards that went away, or moved to another address.
        self.forwards.retain(|name, f| {
            let keep = local.forwards.get(name).is_some_and(|want| {
                f.running.bound.is_none() || f.running.bound == Some(want.listen)
            });
            if !keep {
                tracing::info!(malai_forward = %name, "forward {name} removed or moved; closing its listener");
            }
            keep
        });
        for (name, want) in &local.forwards {
            let target = Target {
                cluster: want.cluster.clone(),
                service: want.service.clone(),
            };
            if let Some(running) = self.forwards.get(name) {
                let mut current = running.target.write().expect("target lock");
                if *current != target {
                    tracing::info!(malai_forward = %name, "forward {name} now reaches {}.{}", target.service, target.cluster);
                    *current = target;
                }
                continue;
            }
            let socket = match claim(&mut sockets, name) {
                Ok(Some(l)) => Socket::Inherited(l),
                Ok(None) => Socket::Bind(want.listen),
                Err(e) => {
                    problems.push(format!("forward {name}: {e:#}"));
                    continue;
                }
            };
            let (listener, bound) = match listen(socket).await {
                Ok(l) => l,
                Err(e) => {
                    problems.push(format!(
                        "forward {name}: cannot listen on {}: {e}",
                        want.listen
                    ));
                    continue;
                }
            };
            let addr = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            if !listener.local_addr().is_ok_and(|a| a.ip().is_loopback()) {
                tracing::warn!(malai_forward = %name, "forward {name} listens on {addr}, which is not a loopback address: whoever reaches it uses this device's access to {}.{}", target.service, target.cluster);
            }
            tracing::info!(
                malai_forward = %name,
                "forward {name}: {addr}{} -> {}.{}",
                if bound.is_none() { " (from systemd)" } else { "" },
                target.service,
                target.cluster
            );
            let target = Arc::new(RwLock::new(target));
            let task = tokio::spawn(client::serve_forward(
                name.clone(),
                listener,
                target.clone(),
                self.clusters.clone(),
            ));
            self.forwards.insert(
                name.clone(),
                RunningForward {
                    running: Running { bound, task },
                    target,
                },
            );
        }

        *self.view.write().expect("view lock") = local
            .forwards
            .iter()
            .map(|(name, f)| crate::status_page::ForwardView {
                name: name.clone(),
                listen: f.listen.to_string(),
                service: format!("{}.{}", f.service, f.cluster),
                running: self.forwards.contains_key(name),
            })
            .collect();
        self.reconcile_http(local, &mut sockets, &mut problems)
            .await;
        for p in &problems {
            tracing::error!("{p}");
        }
        problems
    }

    /// The HTTP listener: wanted when configured, or passed by systemd.
    async fn reconcile_http(
        &mut self,
        local: &LocalConfig,
        sockets: &mut Option<&mut Inherited>,
        problems: &mut Vec<String>,
    ) {
        let want_http = local.http.as_ref().map(|h| h.listen);
        if let Some(running) = &self.http
            && running.bound.is_some()
            && running.bound != want_http
        {
            tracing::info!("the http listener was removed or moved; closing it");
            self.http = None;
        }
        if self.http.is_none() {
            let socket = match claim(sockets, HTTP_SOCKET_NAME) {
                Ok(Some(l)) => Some(Socket::Inherited(l)),
                Ok(None) => want_http.map(Socket::Bind),
                Err(e) => {
                    problems.push(format!("http listener: {e:#}"));
                    None
                }
            };
            if let Some(socket) = socket {
                match listen(socket).await {
                    Ok((listener, bound)) => {
                        let addr = listener
                            .local_addr()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        tracing::info!(
                            "http listener on {addr}{}: SERVICE.CLUSTER.localhost",
                            if bound.is_none() {
                                " (from systemd)"
                            } else {
                                ""
                            }
                        );
                        let task = tokio::spawn(super::http::serve(
                            listener,
                            self.clusters.clone(),
                            self.view.clone(),
                        ));
                        self.http = Some(Running { bound, task });
                    }
                    Err(e) => problems.push(format!(
                        "http listener: cannot listen on {}: {e}",
                        want_http.map(|a| a.to_string()).unwrap_or_default()
                    )),
                }
            }
        }
    }

    /// Closes every listener (connections already carried go on).
    pub fn stop(&mut self) {
        self.forwards.clear();
        self.http = None;
    }
}

fn claim(
    sockets: &mut Option<&mut Inherited>,
    name: &str,
) -> anyhow::Result<Option<std::net::TcpListener>> {
    match sockets {
        Some(s) => s.take_tcp(name),
        None => Ok(None),
    }
}

/// The listener and, when bound here, its configured address.
async fn listen(socket: Socket) -> std::io::Result<(TcpListener, Option<SocketAddr>)> {
    match socket {
        Socket::Inherited(l) => Ok((TcpListener::from_std(l)?, None)),
        Socket::Bind(addr) => Ok((TcpListener::bind(addr).await?, Some(addr))),
    }
}
