//! `malai status [--json]`: clusters, roles, config versions and sync state,
//! as the running daemon sees them, or as the files say when none answers.

use crate::home::Home;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let home = Home::resolve()?;
    let status = super::route::Route::find(&home)?.status()?;
    if args.json {
        super::print_json(&serde_json::to_value(&status)?);
    } else {
        print!("{}", crate::status::render(&status));
    }
    Ok(crate::exit::OK)
}
