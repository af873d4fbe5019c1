//! Sockets systemd passes to the daemon (socket activation: `LISTEN_FDS`,
//! `LISTEN_PID`, and `LISTEN_FDNAMES` from each socket unit's
//! `FileDescriptorName=`). They are taken once, before the runtime starts
//! (taking them edits the environment), and claimed by name by whatever
//! listens on them; a listener with no inherited socket binds its own. A
//! socket whose name nobody claims is reported and closed, so that a
//! mistyped name in a unit file shows up in the journal instead of hanging
//! its clients.

use std::collections::BTreeMap;
use std::net::TcpListener;

use listenfd::ListenFd;

/// The inherited sockets not yet claimed, by name.
pub struct Inherited {
    fds: ListenFd,
    by_name: BTreeMap<String, usize>,
}

impl std::fmt::Debug for Inherited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(&self.by_name).finish()
    }
}

impl Inherited {
    /// Takes the sockets this process was started with (none when
    /// `LISTEN_PID` names another process). Call before any thread starts.
    pub fn from_env() -> Inherited {
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        Inherited::new(ListenFd::from_env(), &names)
    }

    fn new(fds: ListenFd, names: &str) -> Inherited {
        let names: Vec<&str> = if names.is_empty() {
            Vec::new()
        } else {
            names.split(':').collect()
        };
        // systemd names an unnamed socket "unknown"; so do we.
        let by_name = (0..fds.len())
            .map(|i| (names.get(i).copied().unwrap_or("unknown").to_owned(), i))
            .collect();
        Inherited { fds, by_name }
    }

    /// The names of the sockets not claimed yet.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// Claims the TCP listener named `name`, if systemd passed one; an
    /// error when the socket of that name is not a TCP listener.
    pub fn take_tcp(&mut self, name: &str) -> anyhow::Result<Option<TcpListener>> {
        let Some(&idx) = self.by_name.get(name) else {
            return Ok(None);
        };
        let listener = self.fds.take_tcp_listener(idx).map_err(|e| {
            anyhow::anyhow!(
                "the inherited socket {name:?} (FileDescriptorName=) is not a TCP listener: {e}"
            )
        })?;
        self.by_name.remove(name);
        if let Some(l) = &listener {
            l.set_nonblocking(true)?;
        }
        Ok(listener)
    }

    /// Reports every socket nobody claimed and closes it.
    pub fn close_unclaimed(&mut self) {
        for (name, idx) in std::mem::take(&mut self.by_name) {
            tracing::warn!(
                "systemd passed a socket named {name:?} (FileDescriptorName=), but nothing in \
                 malai.toml listens under that name; closing it"
            );
            // Taking it as its raw descriptor and dropping that closes it.
            if let Ok(Some(fd)) = self.fds.take_raw_fd(idx) {
                let _ = nix::unistd::close(fd);
            }
        }
    }
}
