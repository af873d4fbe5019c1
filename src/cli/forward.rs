//! `malai forward list [--json]`: what is forwarded where, from malai.toml
//! and this device's config of each cluster; `malai forward open`: one
//! forward in the foreground until Ctrl-C. No daemon needed.

use clap::Subcommand;

use crate::forward::list;
use crate::home::{self, Home};

#[derive(Debug, Subcommand)]
pub enum ForwardCommand {
    /// Show each [forward.NAME] (address, service, machine) and the HTTP
    /// listener with the services it routes to.
    List {
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Forward SERVICE.CLUSTER to a local port until Ctrl-C (as ssh -L):
    /// by default 127.0.0.1 and the service's own port.
    Open {
        /// The service, as SERVICE.CLUSTER.
        target: String,
        /// Where to listen instead (IP:PORT; port 0 picks a free one).
        #[arg(long, value_name = "IP:PORT")]
        listen: Option<std::net::SocketAddr>,
    },
}

pub fn run(cmd: ForwardCommand) -> anyhow::Result<u8> {
    match cmd {
        ForwardCommand::Open { target, listen } => open(&target, listen),
        ForwardCommand::List { json } => {
            let home = Home::resolve()?;
            let (local, clusters, diags) = home::load_all(&home, None);
            let Some(local) = local else {
                return Err(anyhow::Error::new(diags).context("invalid malai.toml"));
            };
            for d in &diags.0 {
                eprintln!("warning: {d}");
            }
            let listing = list::listing(&local, &clusters);
            if json {
                super::print_json(&serde_json::to_value(&listing)?);
            } else {
                print!("{}", list::render(&listing));
            }
            Ok(crate::exit::OK)
        }
    }
}

fn open(target: &str, listen: Option<std::net::SocketAddr>) -> anyhow::Result<u8> {
    use crate::exit::{CONFIG, EXEC_FAILED, Failure};
    let target = crate::target::Target::parse(target)
        .map_err(|e| Failure::usage(format!("{target:?}: {e} (SERVICE.CLUSTER)")))?;
    let home = Home::resolve()?;
    let local = home
        .local_config()
        .map_err(|d| Failure::new(CONFIG, format!("malai.toml is invalid:\n{d}")))?;
    let dir = home
        .load_cluster(&target.cluster)
        .map_err(|d| Failure::new(EXEC_FAILED, d.to_string()))?;
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let served = super::service_runtime()?.block_on(crate::forward::open::serve(
        &dir,
        &local.network,
        &target.machine,
        listen,
        stop,
        |addr, what| eprintln!("malai: forwarding {addr} to {what}; Ctrl-C to stop"),
    ));
    served.map_err(|e| Failure::new(EXEC_FAILED, format!("{e:#}")))?;
    Ok(crate::exit::OK)
}
