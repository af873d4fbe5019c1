//! The joining device's side of `malai/join/1`: with the identity just made
//! for the cluster, dial the CM where the ticket says (its addresses, the
//! cluster's relay), send the invite's id and secret, and ask again while
//! the join waits for approval or the CM is busy.

use std::time::Duration;

use super::ticket::Ticket;
use super::{JoinAnswer, JoinRequest};
use crate::config::{NetworkSettings, OwnRelay};
use crate::identity::Identity;
use crate::p2p::{self, JOIN_ALPN, Reach, RelayChoice, gate};

/// How long a join tries to reach a CM that refuses for load, or is busy.
const PATIENCE: Duration = Duration::from_secs(60);
/// How often a pending join asks again.
const PENDING_POLL: Duration = Duration::from_secs(1);

/// How a join ended.
#[derive(Debug)]
pub enum Outcome {
    /// In the cluster as `machine`, at config `version`.
    Joined { machine: String, version: u64 },
    /// The CM refused the invite; why.
    Refused(String),
}

/// Joins with `ticket` as `identity`, suggesting `name`; `port` is this
/// cluster's fixed UDP port (0: any). `waiting` is called once when the
/// CM says the join waits for approval, with the approval's id.
pub async fn join(
    identity: &Identity,
    ticket: &Ticket,
    net: &NetworkSettings,
    port: u16,
    name: &str,
    waiting: impl Fn(&str),
) -> anyhow::Result<Outcome> {
    let own = ticket.relay.as_ref().map(|url| OwnRelay {
        url: url.clone(),
        ca_pem: ticket.relay_ca.clone(),
    });
    let relay = RelayChoice::resolve(net, own.as_ref());
    let endpoint = p2p::bind(identity, net, &relay, port, Vec::new(), None).await?;
    // Where the CM may push to: this cluster's fixed port, when it has one.
    let addrs = if port != 0 && !net.bind.is_unspecified() {
        p2p::local_addrs(&endpoint)
    } else {
        Vec::new()
    };
    let reach = Reach {
        addrs: ticket.addrs.clone(),
        relay: relay.dial_via(),
    };
    let ask = JoinRequest {
        invite: ticket.invite.clone(),
        secret: ticket.secret.clone(),
        name: name.to_owned(),
        addrs,
    };
    let outcome = asks(&endpoint, ticket, &reach, &ask, waiting).await;
    p2p::close_without_waiting(endpoint).await;
    outcome
}

async fn asks(
    endpoint: &iroh::Endpoint,
    ticket: &Ticket,
    reach: &Reach,
    ask: &JoinRequest,
    waiting: impl Fn(&str),
) -> anyhow::Result<Outcome> {
    let cm = ticket.cm_id52();
    let mut deadline = tokio::time::Instant::now() + PATIENCE;
    let mut told = false;
    let mut backoff = Duration::from_millis(200);
    let mut conn = None;
    loop {
        let c = match &conn {
            Some(c) => c,
            None => conn.insert(p2p::dial(endpoint, &cm, reach, JOIN_ALPN).await?),
        };
        let answer = match ask_once(c, ask).await {
            Ok(answer) => answer,
            Err(e) => {
                let refusal = gate::refusal(c);
                conn = None;
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!(
                        "the cluster manager did not take the join: {}",
                        refusal.unwrap_or_else(|| format!("{e:#}"))
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        match answer {
            JoinAnswer::Joined { machine, version } => {
                return Ok(Outcome::Joined { machine, version });
            }
            JoinAnswer::Refused { reason } => return Ok(Outcome::Refused(reason)),
            JoinAnswer::Pending { approval } => {
                // A pending join waits as long as it takes.
                deadline = tokio::time::Instant::now() + PATIENCE;
                if !told {
                    waiting(&approval);
                    told = true;
                }
                tokio::time::sleep(PENDING_POLL).await;
            }
            JoinAnswer::Busy { reason } => {
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!("the cluster manager is busy: {reason}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn ask_once(
    conn: &iroh::endpoint::Connection,
    ask: &JoinRequest,
) -> anyhow::Result<JoinAnswer> {
    let (mut send, mut recv) = conn.open_bi().await?;
    crate::p2p::frame::write_msg(&mut send, ask).await?;
    send.finish()?;
    Ok(crate::p2p::frame::read_msg(&mut recv).await?)
}
