//! Which local user is on the other end, and may they: the group rule the
//! D-Bus methods and the local listeners share (root, or a member of a
//! group), and the owner of a TCP connection to one of our listeners, read
//! from `/proc/net/tcp{,6}` (a TCP socket carries no credentials).

use std::net::{IpAddr, SocketAddr};

/// Members may use the system service (run commands, forwards).
pub const ADMIN_GROUP: &str = "malai";

/// Root, or a member of `group` (primary or supplementary).
pub fn in_group(uid: u32, group: &str) -> bool {
    use nix::unistd::{Group, Uid, User, getgrouplist};
    if uid == 0 {
        return true;
    }
    let Ok(Some(group)) = Group::from_name(group) else {
        return false;
    };
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    if user.gid == group.gid || group.mem.contains(&user.name) {
        return true;
    }
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    getgrouplist(&name, user.gid).is_ok_and(|gids| gids.contains(&group.gid))
}

/// Whether local user `uid` may use this daemon's listeners (forwards,
/// HTTP by name), which act with the device's identity: the daemon's own
/// user; for the system service (run as root or as the user `malai`) also
/// root and the members of group malai, as on D-Bus.
pub fn may_use_listeners(uid: u32) -> bool {
    let me = nix::unistd::geteuid();
    if uid == me.as_raw() {
        return true;
    }
    is_system_service() && in_group(uid, ADMIN_GROUP)
}

/// Whether this process is the system service: root (a daemon run by
/// hand, or the first release), or the system user `malai` the package's
/// unit runs it as. It serves on the system bus, and group malai.
pub fn is_system_service() -> bool {
    let me = nix::unistd::geteuid();
    me.is_root()
        || nix::unistd::User::from_uid(me)
            .ok()
            .flatten()
            .is_some_and(|u| u.name == ADMIN_GROUP)
}

/// The uid owning the other end of a TCP connection accepted on `local`
/// from `peer` (both on this host, in this network namespace); `None` when
/// no such socket is listed (it is remote, or gone).
pub fn tcp_peer_uid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let table = match peer.ip() {
        IpAddr::V4(_) => "/proc/net/tcp",
        IpAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    // The client's socket: its local address is our peer, its remote ours.
    let (want_local, want_remote) = (hex(peer), hex(local));
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (l, r, uid) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
        (l.eq_ignore_ascii_case(&want_local) && r.eq_ignore_ascii_case(&want_remote))
            .then(|| uid.parse().ok())
            .flatten()
    })
}

/// An address as `/proc/net/tcp` writes it: the IP as 32-bit words in
/// host (little-endian) order, in hex, a colon, the port in hex.
fn hex(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => v6
            .octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    format!("{ip}:{:04X}", addr.port())
}

/// The name of local user `uid`.
pub fn user_name(uid: u32) -> anyhow::Result<String> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))?
        .ok_or_else(|| anyhow::anyhow!("uid {uid} has no user name on this machine"))?;
    Ok(user.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_in_every_group_and_an_unknown_uid_in_none() {
        assert!(in_group(0, ADMIN_GROUP));
        assert!(!in_group(4_000_000_000, ADMIN_GROUP));
    }

    #[test]
    fn the_owner_of_a_local_connection_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        assert_eq!(client.local_addr().unwrap(), peer);
        assert_eq!(
            tcp_peer_uid(listener.local_addr().unwrap(), peer),
            Some(nix::unistd::geteuid().as_raw())
        );
        assert_eq!(hex("127.0.0.1:80".parse().unwrap()), "0100007F:0050");
    }
}
