//! `malai forward list [--json]`: what is forwarded where, from malai.toml
//! and this device's config of each cluster; no daemon needed.

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
}

pub fn run(cmd: ForwardCommand) -> anyhow::Result<u8> {
    match cmd {
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
