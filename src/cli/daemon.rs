//! `malai daemon`: run in the foreground (systemd runs it so).

use crate::daemon::Daemon;
use crate::daemon::sockets::Inherited;
use crate::home::Home;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<u8> {
    let home = Home::resolve()?;
    // Before the runtime's threads: taking them edits the environment.
    let sockets = Inherited::from_env();
    super::runtime()?.block_on(async {
        let daemon = Daemon::start(home, sockets).await?;
        daemon.run().await
    })?;
    Ok(crate::exit::OK)
}
