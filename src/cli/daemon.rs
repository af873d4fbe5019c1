//! `malai daemon`: run in the foreground (systemd runs it so). Composes the
//! daemon with its signals and with D-Bus: the signal handlers first (so
//! that a SIGHUP from `malai rescan` never kills a daemon still starting),
//! then the clusters, then the objects on the bus and its name, then
//! READY=1.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::daemon::Daemon;
use crate::home::Home;
use crate::sockets::Inherited;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<u8> {
    let home = Home::resolve()?;
    // Before the runtime's threads: taking them edits the environment.
    let sockets = Inherited::from_env();
    super::service_runtime()?.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let daemon = Daemon::start(home, sockets).await?;
        let dbus = match crate::dbus::Bus::for_daemon() {
            None => None,
            Some(bus) => match crate::dbus::service::Service::start(&bus, daemon.handle()).await {
                Ok(s) => {
                    tracing::info!("serving {} on {bus}", crate::dbus::BUS_NAME);
                    Some(s)
                }
                Err(e) => {
                    tracing::warn!("running without D-Bus: {e:#}");
                    None
                }
            },
        };
        let (reload_tx, reload) = mpsc::channel(4);
        let reloads = tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if reload_tx.send(()).await.is_err() {
                    break;
                }
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        let result = daemon.run(shutdown, reload).await;
        reloads.abort();
        drop(dbus);
        result
    })?;
    Ok(crate::exit::OK)
}
