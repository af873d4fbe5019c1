//! One command on many machines: `malai web01,web02.company CMD`,
//! `@all.company`, `@GROUP.company`. Each machine runs on its own task (at
//! most `jobs` at once) with its own timeout, stdin closed (ssh -n), and
//! its output prefixed line by line (`output`); a machine that is denied,
//! unreachable or too slow is reported as such and holds back nobody else.
//! Ctrl-C reaches every running command. The summary goes to stderr, or
//! everything into one JSON object; the exit code is 0 only when every
//! machine ran the command and it exited 0 (DESIGN.md, "Fan-out output").

pub mod bus;
pub mod direct;
pub mod output;

use std::time::Duration;

use serde_json::json;

use crate::exec::ExecError;

/// The options that go before the target (`malai -j 8 --timeout 10s ...`).
#[derive(Debug, Clone)]
pub struct Options {
    /// At most this many machines at once.
    pub jobs: usize,
    /// Each machine's bound, from its dial to its command's end.
    pub timeout: Duration,
    /// One JSON object on stdout instead of prefixed lines.
    pub json: bool,
}

pub const DEFAULT_JOBS: u16 = 32;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How one machine's part ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The command ran and exited with this code.
    Exit(u8),
    /// The machine refused it (its ACL, or the connection).
    Denied(String),
    /// The machine could not be reached.
    Unreachable(String),
    /// Still running (or dialing) when its timeout came; it was stopped.
    TimedOut(Duration),
    /// Not run, or ended without an exit code (lost, revoked).
    Failed(String),
}

impl Ended {
    pub fn ok(&self) -> bool {
        *self == Ended::Exit(0)
    }

    /// A word for `--json`'s `status`.
    fn status(&self) -> &'static str {
        match self {
            Ended::Exit(0) => "ok",
            Ended::Exit(_) => "exit",
            Ended::Denied(_) => "denied",
            Ended::Unreachable(_) => "unreachable",
            Ended::TimedOut(_) => "timeout",
            Ended::Failed(_) => "failed",
        }
    }

    /// Why it failed, in the summary's words (`None`: it did not).
    pub fn cause(&self) -> Option<String> {
        match self {
            Ended::Exit(0) => None,
            Ended::Exit(code) => Some(format!("exit {code}")),
            Ended::Denied(why) => Some(format!("denied: {why}")),
            Ended::Unreachable(why) => Some(format!("unreachable: {why}")),
            Ended::TimedOut(after) => Some(format!(
                "timed out after {}",
                crate::config::duration::format(*after)
            )),
            Ended::Failed(why) => Some(format!("failed: {why}")),
        }
    }
}

impl From<ExecError> for Ended {
    fn from(e: ExecError) -> Ended {
        match e {
            ExecError::Denied { reason, .. } => Ended::Denied(reason),
            ExecError::Unreachable(why) => Ended::Unreachable(why),
            other => Ended::Failed(other.to_string()),
        }
    }
}

/// One machine's part: how it ended and, for `--json`, its output.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub machine: String,
    pub ended: Ended,
    pub stdout: output::Kept,
    pub stderr: output::Kept,
}

impl Outcome {
    /// A machine whose command never started.
    pub fn without_output(machine: String, ended: Ended) -> Outcome {
        Outcome {
            machine,
            ended,
            stdout: output::Kept::default(),
            stderr: output::Kept::default(),
        }
    }
}

/// `4 machines: 1 ok, 3 failed (web02: exit 3; web03: denied: ...)`.
pub fn summary(outcomes: &[Outcome]) -> String {
    let ok = outcomes.iter().filter(|o| o.ended.ok()).count();
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.machine, o.ended.cause()?)))
        .collect();
    let n = outcomes.len();
    let machines = if n == 1 { "machine" } else { "machines" };
    if failed.is_empty() {
        format!("{n} {machines}: {ok} ok")
    } else {
        format!(
            "{n} {machines}: {ok} ok, {} failed ({})",
            failed.len(),
            failed.join("; ")
        )
    }
}

/// The `--json` object: `machines`, each with `machine`, `exit`, `stdout`,
/// `stderr`, `error` and `status`.
pub fn to_json(outcomes: &[Outcome]) -> serde_json::Value {
    let machines: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            let exit = match o.ended {
                Ended::Exit(code) => Some(code),
                _ => None,
            };
            let error = match o.ended {
                Ended::Exit(_) => None,
                _ => o.ended.cause(),
            };
            json!({
                "machine": o.machine,
                "status": o.ended.status(),
                "exit": exit,
                "stdout": o.stdout.text(),
                "stderr": o.stderr.text(),
                "error": error,
            })
        })
        .collect();
    json!({ "machines": machines })
}

/// 0 when every machine ran the command and it exited 0, else 1.
pub fn exit_code(outcomes: &[Outcome]) -> u8 {
    if outcomes.iter().all(|o| o.ended.ok()) {
        crate::exit::OK
    } else {
        crate::exit::FAILURE
    }
}

/// Ends the fan-out: prints the JSON object or the summary; the exit code.
pub fn report(mut outcomes: Vec<Outcome>, opts: &Options) -> u8 {
    outcomes.sort_by(|a, b| a.machine.cmp(&b.machine));
    if opts.json {
        let json = serde_json::to_string_pretty(&to_json(&outcomes)).expect("JSON serializes");
        println!("{json}");
    } else {
        eprintln!("{}", summary(&outcomes));
    }
    exit_code(&outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(machine: &str, ended: Ended) -> Outcome {
        Outcome {
            machine: machine.into(),
            ended,
            stdout: output::Kept::default(),
            stderr: output::Kept::default(),
        }
    }

    #[test]
    fn the_summary_names_each_failure_and_the_exit_code_counts_them() {
        let all = vec![
            outcome("web01", Ended::Exit(0)),
            outcome("web02", Ended::Exit(3)),
            outcome(
                "web03",
                Ended::Denied("peer is not in machine.web03.allow_from".into()),
            ),
            outcome("web04", Ended::TimedOut(Duration::from_secs(3))),
        ];
        assert_eq!(
            summary(&all),
            "4 machines: 1 ok, 3 failed (web02: exit 3; web03: denied: peer is not in machine.web03.allow_from; web04: timed out after 3s)"
        );
        assert_eq!(exit_code(&all), 1);
        assert_eq!(exit_code(&all[..1]), 0);
        assert_eq!(summary(&all[..1]), "1 machine: 1 ok");
        let json = to_json(&all);
        assert_eq!(json["machines"][1]["exit"], 3);
        assert_eq!(json["machines"][3]["exit"], serde_json::Value::Null);
        assert_eq!(json["machines"][3]["status"], "timeout");
    }
}
