//! A cluster manager's state.json, written by group commit. A change to
//! the ledger takes a generation; one blocking-pool thread writes the
//! newest ledger while generations are pending, so the acknowledgements
//! that arrive during one write share the next (one fsync for many, where
//! each used to write and fsync the whole file under the ledger lock, on
//! a runtime thread). A caller reports its change only once its
//! generation is on disk (`Saver::durable`).
//!
//! Each write tells whoever shows the ledger (the daemon's STATUS= line)
//! to look again. That is the saver's job, not its callers': a caller may
//! stop waiting (the pusher aborts a push whose machine fetched meanwhile,
//! and the push may be waiting here with its acknowledgement already in
//! the ledger), and the line must not keep the state from before it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

use crate::state::CmState;

#[derive(Debug)]
pub struct Saver {
    /// Held by whoever writes state.json (this saver, and a commit, which
    /// writes under the ledger lock): always taken before the ledger lock,
    /// so that no write of an older snapshot lands after a newer one.
    pub writing: Mutex<()>,
    /// The ledger's generation, bumped under the ledger lock.
    generation: AtomicU64,
    /// The newest generation on disk (or whose write failed, logged).
    written: watch::Sender<u64>,
    /// Whether a writer thread is running.
    running: AtomicBool,
    path: PathBuf,
    cluster: String,
    /// Told after each write.
    changed: Arc<Notify>,
}

impl Saver {
    pub fn new(path: PathBuf, cluster: &str, changed: Arc<Notify>) -> Saver {
        Saver {
            writing: Mutex::new(()),
            generation: AtomicU64::new(0),
            written: watch::Sender::new(0),
            running: AtomicBool::new(false),
            path,
            cluster: cluster.to_owned(),
            changed,
        }
    }

    /// A change was made to the ledger; called with its lock held. The
    /// change's generation, for `durable`.
    pub fn changed(&self) -> u64 {
        self.generation.fetch_add(1, SeqCst) + 1
    }

    /// Writes the ledger soon (with the lock released), unless a writer is
    /// at it already: that one writes again when it is done.
    pub fn save(self: &Arc<Self>, ledger: &Arc<Mutex<CmState>>) {
        if self.running.swap(true, SeqCst) {
            return;
        }
        let (saver, ledger) = (self.clone(), ledger.clone());
        tokio::task::spawn_blocking(move || {
            loop {
                saver.write_newest(&ledger);
                saver.running.store(false, SeqCst);
                // A change made after the snapshot, whose caller saw this
                // thread running, is written by this thread.
                let pending = saver.generation.load(SeqCst) > *saver.written.borrow();
                if !pending || saver.running.swap(true, SeqCst) {
                    break;
                }
            }
        });
    }

    fn write_newest(&self, ledger: &Mutex<CmState>) {
        let _writing = self.writing.lock().expect("state writing lock");
        let (generation, snapshot) = {
            let ledger = ledger.lock().expect("ledger lock");
            (self.generation.load(SeqCst), ledger.clone())
        };
        if generation <= *self.written.borrow() {
            return;
        }
        if let Err(e) = snapshot.save(&self.path) {
            tracing::error!(malai_cluster = %self.cluster, "cannot record sync state: {e:#}");
        }
        self.written.send_replace(generation);
        self.changed.notify_one();
    }

    /// Resolves once `generation` is on disk.
    pub async fn durable(&self, generation: u64) {
        let mut written = self.written.subscribe();
        let _ = written.wait_for(|w| *w >= generation).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many changes at once: each caller finds its own change on disk once
    /// `durable` returns, and the file ends as the ledger ends (no older
    /// snapshot written over a newer one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_is_on_disk_when_durable_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let saver = Arc::new(Saver::new(path.clone(), "test", Arc::default()));
        let ledger = Arc::new(Mutex::new(CmState::default()));
        let tasks: Vec<_> = (1..=200u64)
            .map(|v| {
                let (saver, ledger, path) = (saver.clone(), ledger.clone(), path.clone());
                tokio::spawn(async move {
                    let generation = {
                        let mut l = ledger.lock().unwrap();
                        l.version = l.version.max(v);
                        saver.changed()
                    };
                    saver.save(&ledger);
                    saver.durable(generation).await;
                    let on_disk = CmState::load(&path).unwrap();
                    assert!(on_disk.version >= v, "{} < {v}", on_disk.version);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(CmState::load(&path).unwrap().version, 200);
    }

    /// A caller that stops waiting for its change (the pusher aborting a
    /// push) does not keep it from the daemon: the write that carries it
    /// tells `changed`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_whose_caller_stopped_waiting_is_still_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let changed = Arc::new(Notify::new());
        let saver = Arc::new(Saver::new(path.clone(), "test", changed.clone()));
        let ledger = Arc::new(Mutex::new(CmState::default()));
        let told = changed.notified();
        tokio::pin!(told);
        told.as_mut().enable();
        let generation = {
            let mut l = ledger.lock().unwrap();
            l.version = 7;
            saver.changed()
        };
        saver.save(&ledger);
        // The caller's wait, abandoned at once.
        drop(saver.durable(generation));
        tokio::time::timeout(std::time::Duration::from_secs(10), told)
            .await
            .expect("the daemon is told of the change");
        assert_eq!(CmState::load(&path).unwrap().version, 7);
    }
}
