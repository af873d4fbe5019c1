//! Helpers shared by the integration tests: temporary homes and running the
//! real `malai` binary in them.

#![allow(dead_code)]

pub mod bus;
pub mod net;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn malai_bin() -> &'static str {
    env!("CARGO_BIN_EXE_malai")
}

/// A MALAI_HOME in a temporary directory, deleted when dropped.
pub struct TestHome {
    pub dir: tempfile::TempDir,
}

impl TestHome {
    pub fn new() -> Self {
        TestHome {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cluster_dir(&self, alias: &str) -> PathBuf {
        self.path().join("clusters").join(alias)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(malai_bin());
        c.env("MALAI_HOME", self.path()).env_remove("RUST_LOG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run malai")
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "malai {args:?} failed ({:?}):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("stdout is one JSON object")
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
