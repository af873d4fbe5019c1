//! Starting a checked command in its own control group. In the package
//! (`--delegated`): a group of the helper's delegated subtree
//! (`helper::cgroup`), the child cloned straight into it
//! (`command::clone`). A command with limits that subtree cannot apply (a
//! host whose controllers are on cgroup v1) runs instead as a transient
//! service unit through systemd's D-Bus API, as `systemd-run` does, with
//! the peer's pipes or a PTY as its terminal, the rule's limits
//! (`MemoryMax`, `TasksMax`, `CPUQuotaPerSecUSec`) and a description an
//! admin can find (`systemctl list-units 'malai-cmd-*'`). Either way the
//! whole group is killed on disconnect, `setsid` escapes included. Without
//! systemd (tests, other init systems): a child of the helper in its own
//! session, as the daemon would run it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use zbus::proxy::CacheProperties;
use zbus::{Connection, Proxy, Variant};

use super::cgroup::{Group, Tree};
use super::check::Checked;
use crate::command::process::Process;
use crate::command::spawn::{self, StdioMode};
use crate::config::Limits;

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// How the helper starts commands: in groups of its delegated subtree
/// (`cgroup`), in transient units for what the subtree cannot limit, or as
/// plain children where neither is there (no systemd).
pub struct Launcher {
    tree: Option<Tree>,
    systemd: Option<Connection>,
}

/// Who a command is for, for its group's or unit's name and description.
pub struct Label<'a> {
    pub cluster: &'a str,
    pub peer: &'a str,
    pub argv: &'a [String],
}

/// A command the launcher started.
pub struct Started {
    /// Its control group, unit, or `pid N`.
    pub unit: String,
    pub pty_master: Option<OwnedFd>,
    pub running: Running,
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per running command, never moved in a loop"
)]
pub enum Running {
    Unit(UnitRun),
    Child(Process, Option<Arc<Group>>),
}

static NEXT: AtomicU64 = AtomicU64::new(1);

impl Launcher {
    /// With `delegated`, the subtree systemd delegated to this process
    /// (an error if there is none); transient units when systemd runs
    /// this system and its bus answers; else children.
    pub async fn detect(delegated: bool) -> anyhow::Result<Launcher> {
        let tree = if delegated {
            Some(Tree::adopt().context("taking over the delegated control group (Delegate=yes)")?)
        } else {
            None
        };
        let systemd = if std::path::Path::new("/run/systemd/system").exists() {
            let conn = Connection::system()
                .await
                .context("connecting to the system bus to start commands as systemd units")?;
            // systemd sends unit property changes only to subscribed clients.
            manager(&conn).await?.call_method("Subscribe", &()).await?;
            Some(conn)
        } else {
            None
        };
        Ok(Launcher { tree, systemd })
    }

    pub fn name(&self) -> String {
        match (&self.tree, &self.systemd) {
            (Some(t), Some(_)) => format!(
                "control groups under {} (transient units for limits it cannot apply)",
                t.base().display()
            ),
            (Some(t), None) => format!("control groups under {}", t.base().display()),
            (None, Some(_)) => "transient systemd units".into(),
            (None, None) => "children of the helper (no systemd, no limits)".into(),
        }
    }

    /// Starts `checked` with `pipes` (stdin, stdout, stderr; `None` on a PTY).
    pub async fn start(
        &self,
        checked: Checked,
        pipes: Option<[OwnedFd; 3]>,
        label: &Label<'_>,
    ) -> anyhow::Result<Started> {
        let mut spec = checked.spec;
        if let Some(fds) = pipes {
            spec.stdio = StdioMode::Fds(fds);
        }
        let name = format!(
            "cmd-{}-{}-{}",
            label.cluster,
            &label.peer[..label.peer.len().min(8)],
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let (group, cgroup_dir) = match (&self.tree, &self.systemd) {
            (Some(tree), _) if tree.supports(&checked.limits) => {
                let (group, dir) = tree.create(&name, &checked.limits)?;
                (Some(Arc::new(group)), Some(dir))
            }
            (_, Some(conn)) => {
                let unit = format!("malai-{name}-{}.service", std::process::id());
                return start_unit(conn, unit, spec, &checked.limits, label).await;
            }
            (_, None) => {
                if !checked.limits.is_empty() {
                    tracing::warn!(
                        "malai helper: no control groups here: {name} runs without its limits"
                    );
                }
                (None, None)
            }
        };
        let t0 = std::time::Instant::now();
        let spawned = Process::spawn(spec, cgroup_dir.as_ref());
        tracing::debug!(
            "malai helper: {name}: fork and exec took {} µs",
            t0.elapsed().as_micros()
        );
        let mut process = match spawned {
            Ok(p) => p,
            Err(e) => {
                if let Some(g) = group {
                    g.remove().await;
                }
                return Err(e);
            }
        };
        let pty_master = process.pty_master.take();
        let unit = match (&group, &process.control) {
            (Some(g), _) => g.name(),
            (None, crate::command::process::Control::Session(pid, _)) => format!("pid {pid}"),
            (None, crate::command::process::Control::Helper(_)) => unreachable!("a child"),
        };
        Ok(Started {
            unit,
            pty_master,
            running: Running::Child(process, group),
        })
    }
}

async fn manager(conn: &Connection) -> zbus::Result<Proxy<'static>> {
    zbus::proxy::Builder::new(conn)
        .destination(SYSTEMD)
        .path(MANAGER_PATH)
        .interface(MANAGER)
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// A unit's object path: systemd escapes every byte but ASCII letters and
/// digits (and a leading digit) as `_xx`.
fn unit_path(name: &str) -> String {
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            path.push(b as char);
        } else {
            path.push_str(&format!("_{b:02x}"));
        }
    }
    path
}

fn limit_properties(limits: &Limits) -> Vec<(&'static str, Variant<'static>)> {
    let mut props = Vec::new();
    if let Some(l) = &limits.memory_max {
        props.push(("MemoryMax", Variant::from(l.value)));
    }
    if let Some(l) = &limits.tasks_max {
        props.push(("TasksMax", Variant::from(l.value)));
    }
    if let Some(l) = &limits.cpu_quota {
        props.push(("CPUQuotaPerSecUSec", Variant::from(l.value)));
    }
    props
}

/// The properties of the unit that runs `prepared` (`exe` is its resolved
/// argv[0]), without its terminal or descriptors.
fn unit_properties(
    prepared: &spawn::Prepared,
    exe: &std::path::Path,
    limits: &Limits,
    label: &Label<'_>,
) -> Vec<(&'static str, Variant<'static>)> {
    let mut what = if label.argv.is_empty() {
        "a shell".to_owned()
    } else {
        shell_words::join(label.argv)
    };
    if what.len() > 200 {
        what.truncate(what.floor_char_boundary(200));
        what.push('…');
    }
    let description = format!(
        "malai: {what} for peer {} of cluster {}",
        label.peer, label.cluster
    );
    let env: Vec<String> = prepared
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut props: Vec<(&str, Variant<'_>)> = vec![
        ("Description", Variant::from(description)),
        (
            "ExecStart",
            Variant::from(vec![(
                exe.to_string_lossy().into_owned(),
                prepared.argv.clone(),
                false,
            )]),
        ),
        ("Environment", Variant::from(env)),
        (
            "WorkingDirectory",
            Variant::from(prepared.cwd.to_string_lossy().into_owned()),
        ),
        ("AddRef", Variant::from(true)),
        ("CollectMode", Variant::from("inactive-or-failed")),
        ("IgnoreSIGPIPE", Variant::from(false)),
        ("KillMode", Variant::from("control-group")),
        ("SendSIGHUP", Variant::from(true)),
    ];
    if prepared.user.uid.as_raw() != 0 {
        props.push(("User", Variant::from(prepared.user.name.clone())));
    }
    props.extend(limit_properties(limits));
    props
}

async fn start_unit(
    conn: &Connection,
    name: String,
    spec: spawn::Spec,
    limits: &Limits,
    label: &Label<'_>,
) -> anyhow::Result<Started> {
    let prepared = spawn::prepare(&spec)?;
    let exe = spawn::resolve(&prepared.argv[0])
        .with_context(|| format!("cannot run {:?}: no such program", prepared.argv[0]))?;
    let mut props = unit_properties(&prepared, &exe, limits, label);
    let mut pty_master = None;
    let mut slave_keep = None;
    match (&spec.pty, &spec.stdio) {
        (Some(size), _) => {
            let (master, slave) = spawn::open_pty(*size)?;
            let tty = rustix::pty::ptsname(&master, Vec::new()).context("ptsname")?;
            let tty = tty.to_string_lossy().into_owned();
            spawn::give_terminal(&slave, prepared.user.uid)?;
            for key in ["StandardInput", "StandardOutput", "StandardError"] {
                props.push((key, Variant::from("tty")));
            }
            props.push(("TTYPath", Variant::from(tty)));
            pty_master = Some(master);
            slave_keep = Some(slave);
        }
        (None, StdioMode::Fds([i, o, e])) => {
            props.push((
                "StandardInputFileDescriptor",
                Variant::from(zbus::Fd::from(i.as_fd())),
            ));
            props.push((
                "StandardOutputFileDescriptor",
                Variant::from(zbus::Fd::from(o.as_fd())),
            ));
            props.push((
                "StandardErrorFileDescriptor",
                Variant::from(zbus::Fd::from(e.as_fd())),
            ));
        }
        (None, _) => anyhow::bail!("a command without a PTY needs its pipes"),
    }

    let path = unit_path(&name);
    let properties = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(SYSTEMD)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    // Subscribed before the unit exists: no change of it is missed.
    let changes = properties.receive_properties_changed().await?;
    let aux: Vec<(String, Vec<(String, Variant<'_>)>)> = Vec::new();
    manager(conn)
        .await?
        .call_method("StartTransientUnit", &(name.as_str(), "fail", props, aux))
        .await
        .with_context(|| format!("systemd did not start {name}"))?;
    drop(slave_keep);
    let unit: Proxy<'static> = zbus::proxy::Builder::new(conn)
        .destination(SYSTEMD)
        .path(path.clone())
        .interface("org.freedesktop.systemd1.Unit")
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let service: Proxy<'static> = zbus::proxy::Builder::new(conn)
        .destination(SYSTEMD)
        .path(path)
        .interface("org.freedesktop.systemd1.Service")
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    Ok(Started {
        unit: name.clone(),
        pty_master,
        running: Running::Unit(UnitRun {
            conn: conn.clone(),
            name,
            unit,
            service,
            changes,
        }),
    })
}

/// A command in a transient unit.
pub struct UnitRun {
    conn: Connection,
    name: String,
    unit: Proxy<'static>,
    service: Proxy<'static>,
    changes: zbus::fdo::PropertiesChangedStream,
}

impl UnitRun {
    /// The exit code once the unit's main process ended (128+N for signal
    /// N); the unit is then released to be collected.
    async fn wait(&mut self) -> anyhow::Result<u8> {
        let code = loop {
            // The start time first: it is set once, so an "inactive" read
            // after it is the end of this run, not the moment before it.
            let started: u64 = self
                .service
                .get_property("ExecMainStartTimestampMonotonic")
                .await?;
            let state: String = self.unit.get_property("ActiveState").await?;
            if state == "failed" || (state == "inactive" && started > 0) {
                let how: i32 = self.service.get_property("ExecMainCode").await?;
                let status: i32 = self.service.get_property("ExecMainStatus").await?;
                break match how {
                    // CLD_EXITED
                    1 => Ok(status as u8),
                    // CLD_KILLED, CLD_DUMPED
                    2 | 3 => Ok((128 + status) as u8),
                    _ => {
                        let result: String = self.service.get_property("Result").await?;
                        Err(anyhow::anyhow!("{} failed to start ({result})", self.name))
                    }
                };
            }
            if self.changes.next().await.is_none() {
                anyhow::bail!("the system bus closed while {} ran", self.name);
            }
        };
        let _ = self.unit.call_method("Unref", &()).await;
        code
    }
}

impl Running {
    /// The exit code; a command's group goes with it (what it left
    /// running is killed, as a unit's would be).
    pub async fn wait(&mut self) -> anyhow::Result<u8> {
        match self {
            Running::Unit(u) => u.wait().await,
            Running::Child(p, group) => {
                let code = p.wait().await?;
                // The group goes even while a Signaller still holds it: what
                // the command left running dies with it.
                if let Some(g) = group.take() {
                    tokio::spawn(async move { g.remove().await });
                }
                Ok(code)
            }
        }
    }

    /// What signals the command while `wait` runs.
    pub fn signaller(&self) -> Signaller {
        match self {
            Running::Unit(u) => Signaller::Unit(u.conn.clone(), u.name.clone()),
            Running::Child(_, Some(g)) => Signaller::Group(g.clone()),
            Running::Child(p, None) => Signaller::Child(p.control.clone()),
        }
    }
}

/// Signals every process of a command: its unit's or group's, or its
/// session.
pub enum Signaller {
    Unit(Connection, String),
    Group(Arc<Group>),
    Child(crate::command::process::Control),
}

impl Signaller {
    pub async fn send(&self, signal: Signal) {
        match self {
            Signaller::Unit(conn, name) => {
                let killed = async {
                    manager(conn)
                        .await?
                        .call_method("KillUnit", &(name.as_str(), "all", signal as i32))
                        .await
                }
                .await;
                if let Err(e) = killed {
                    tracing::warn!("cannot signal {name}: {e}");
                }
            }
            Signaller::Group(g) => g.signal(signal),
            Signaller::Child(c) if signal == Signal::SIGKILL => c.kill(),
            Signaller::Child(c) => c.signal(signal),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_paths_are_escaped_as_systemd_does() {
        assert_eq!(
            super::unit_path("malai-cmd-company-1.service"),
            "/org/freedesktop/systemd1/unit/malai_2dcmd_2dcompany_2d1_2eservice"
        );
        assert_eq!(
            super::unit_path("1a.service"),
            "/org/freedesktop/systemd1/unit/_31a_2eservice"
        );
    }
}
