//! `malai recordings list [--json] | play ID`: the session recordings this
//! device keeps as its cluster's recorder (`record::store`).

use std::io::{BufRead as _, Write as _};

use crate::exit::{Failure, OK};
use crate::home::Home;
use crate::record::store;

#[derive(Debug, clap::Subcommand)]
pub enum RecordingsCommand {
    /// The recordings kept here: id, when, who, where, what.
    List {
        /// One JSON object on stdout (`recordings`, each with its header).
        #[arg(long)]
        json: bool,
    },
    /// Replays a recording on this terminal with its timing (pauses cut
    /// to a second); stderr of a command to stderr.
    Play { id: String },
}

pub fn run(cmd: RecordingsCommand) -> anyhow::Result<u8> {
    let home = Home::resolve()?;
    let all = store::list(&home);
    match cmd {
        RecordingsCommand::List { json } => {
            if json {
                super::print_json(&serde_json::json!({ "recordings": all }));
            } else if all.is_empty() {
                eprintln!(
                    "no recordings: this device keeps those of clusters whose recorder it is"
                );
            } else {
                for e in &all {
                    let s = &e.header.malai;
                    println!(
                        "{}  {}.{}  peer {}  {}",
                        e.id,
                        s.machine,
                        e.cluster,
                        s.peer,
                        e.header.title.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(OK)
        }
        RecordingsCommand::Play { id } => {
            let entry = all.iter().find(|e| e.id == id).ok_or_else(|| {
                Failure::usage(format!(
                    "no recording {id:?} here (see `malai recordings list`)"
                ))
            })?;
            play(&entry.path)?;
            Ok(OK)
        }
    }
}

/// The longest pause a replay keeps.
const IDLE: f64 = 1.0;

fn play(path: &std::path::Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)?;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    let mut last = 0.0;
    for line in std::io::BufReader::new(file).lines().skip(1) {
        let Ok((t, kind, text)) = serde_json::from_str::<(f64, String, String)>(&line?) else {
            continue;
        };
        let pause = (t - last).clamp(0.0, IDLE);
        last = t;
        std::thread::sleep(std::time::Duration::from_secs_f64(pause));
        match kind.as_str() {
            "o" => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            "e" => {
                err.write_all(text.as_bytes())?;
                err.flush()?;
            }
            _ => {}
        }
    }
    Ok(())
}
