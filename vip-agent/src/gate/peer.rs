//! Who answered: whether Patroni's failsafe word may hold the VIP past its lease.
//!
//! Patroni's `failsafe_mode_is_active: true` moves the deadline past what etcd proves, so it is
//! taken only from a peer that cannot be anybody else (issue 16, item 1):
//! * https with `patroni-ca-file`: the server proved a certificate of that CA;
//! * plain http to this host (loopback or the node's own address): the socket that accepted the
//!   connection belongs to root or to Patroni's user (`postgres`, as Debian's and Pigsty's units
//!   run it). The kernel records the owner of the listening socket at `socket()` and copies it to
//!   every accepted socket; `/proc/net/tcp{,6}` shows it for the accepted end of this very
//!   connection, so a listener another local user bound (on a port Patroni left free, or while
//!   Patroni is dead) is told apart.
//!
//! Plain http to another host cannot be verified: its failsafe word is not taken.
//!
//! Hand-written because no maintained crate reads one socket's owner: the `procfs` crate would
//! add a large dependency for two text files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Patroni's user as Debian's `patroni.service` and Pigsty run it.
pub(super) const PATRONI_USER: &str = "postgres";

/// The uids whose listeners are trusted: root, this process's user, and [`PATRONI_USER`] when it
/// exists on this host.
#[must_use]
pub(super) fn trusted_uids() -> Vec<u32> {
    let mut uids = vec![0, nix::unistd::geteuid().as_raw()];
    if let Ok(Some(user)) = nix::unistd::User::from_name(PATRONI_USER) {
        uids.push(user.uid.as_raw());
    }
    uids
}

/// Why the server end of the TCP connection `local` → `peer` is not a trusted local listener, or
/// `Ok` when it is.
///
/// # Errors
/// The reason, for the status and the log.
pub(super) fn check_local_listener(local: SocketAddr, peer: SocketAddr) -> Result<(), String> {
    let (local_ip, peer_ip) = (plain(local.ip()), plain(peer.ip()));
    if !peer_ip.is_loopback() && peer_ip != local_ip {
        return Err(format!(
            "plain http to another host ({peer}) cannot be verified; use https with \
             patroni-ca-file, or the node's own address"
        ));
    }
    let mut tables = String::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            tables.push_str(&text);
        }
    }
    let Some(uid) = server_socket_uid(&tables, local, peer) else {
        return Err(format!(
            "the socket that accepted {local} -> {peer} is not in /proc/net/tcp (another \
             network namespace?)"
        ));
    };
    let trusted = trusted_uids();
    if trusted.contains(&uid) {
        Ok(())
    } else {
        Err(format!(
            "the REST API's socket at {peer} belongs to uid {uid}, neither root nor {PATRONI_USER} \
             ({trusted:?}): not Patroni"
        ))
    }
}

/// The uid of the server end of `local` → `peer` in `/proc/net/tcp{,6}` text: the established
/// (`01`) line whose local address is `peer` and remote address is `local`. Once closed, the
/// server end shows uid 0 (a time-wait socket has no owner), so it must be read while the
/// connection is open.
fn server_socket_uid(tables: &str, local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let want = (
        plain(peer.ip()),
        peer.port(),
        plain(local.ip()),
        local.port(),
    );
    tables.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
        let [_, l, r, "01", _, _, _, uid, ..] = words.as_slice() else {
            return None;
        };
        let (l_ip, l_port) = endpoint(l)?;
        let (r_ip, r_port) = endpoint(r)?;
        (want == (l_ip, l_port, r_ip, r_port)).then(|| uid.parse().ok())?
    })
}

/// `0100007F:1F48` (IPv4) or 32 hex digits `:port` (IPv6): each 32-bit word as the kernel printed
/// it from memory, so in this host's byte order.
fn endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        addr.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((plain(ip), port))
}

/// An IPv4-mapped IPv6 address as IPv4 (a dual-stack listener's accepted sockets show so).
fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as Linux prints them on a little-endian host.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F48 00000000:0000 0A 00000000:00000000 00:00000000 00000000   108        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F48 0100007F:D431 01 00000000:00000000 00:00000000 00000000   108        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D431 0100007F:1F48 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000500000A:1F48 0000000000000000FFFF00000500000A:A001 01 00000000:00000000 00:00000000 00000000  1000        0 4 1 0000000000000000 20 4 30 10 -1
";

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn the_server_end_of_a_connection_is_found_with_its_owner() {
        if cfg!(target_endian = "big") {
            return;
        }
        let (client, server) = (addr("127.0.0.1:54321"), addr("127.0.0.1:8008"));
        assert_eq!(server_socket_uid(TCP, client, server), Some(108));
        // The client's own end is not the server's.
        assert_eq!(server_socket_uid(TCP, server, client), Some(0));
        // A closed server end (time-wait, uid 0) proves nothing.
        let closed = TCP.replace(
            "0100007F:D431 01 00000000:00000000 00:00000000 00000000   108",
            "0100007F:D431 06 00000000:00000000 00:00000000 00000000     0",
        );
        assert_eq!(server_socket_uid(&closed, client, server), None);
        assert_eq!(
            server_socket_uid(TCP, addr("127.0.0.1:1"), server),
            None,
            "another connection"
        );
        // A dual-stack listener's accepted socket shows the IPv4-mapped form.
        let (client, server) = (addr("10.0.0.5:40961"), addr("10.0.0.5:8008"));
        assert_eq!(server_socket_uid(TCP6, client, server), Some(1000));
    }

    #[test]
    fn garbage_lines_are_skipped() {
        for text in [
            "",
            "x",
            "0: zz:1 00:00 0A a b c d",
            "0: 0100007F:1F48 0100007F",
        ] {
            assert_eq!(
                server_socket_uid(text, addr("127.0.0.1:1"), addr("127.0.0.1:2")),
                None
            );
        }
    }

    #[test]
    fn another_host_over_plain_http_is_not_verified() {
        let err = check_local_listener(addr("10.0.0.5:40000"), addr("10.0.0.6:8008"))
            .expect_err("remote");
        assert!(err.contains("another host"), "{err}");
    }

    /// A real connection on loopback: the accepting socket belongs to this process's user.
    #[test]
    fn a_listener_of_this_user_is_trusted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(server).expect("connect");
        let _accepted = listener.accept().expect("accept");
        check_local_listener(client.local_addr().expect("local"), server).expect("own listener");
    }
}
