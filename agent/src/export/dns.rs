//! The DNS resolver of the gateway set: A and AAAA queries over UDP to the
//! system's nameserver (/etc/resolv.conf) or a configured one.
//!
//! Written by hand because it is small: one question per message, answers
//! read for their A and AAAA records (names behind compression pointers are
//! skipped, never followed, so a hostile answer cannot loop). Runs on its own
//! thread (`tern-dns`), so routing never waits on it.
//!
//! See: RFC 1035 section 4 (message format), RFC 3596 (AAAA).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Record type A.
const TYPE_A: u16 = 1;
/// Record type AAAA.
const TYPE_AAAA: u16 = 28;
/// Largest answer read; more than a plain UDP answer may carry.
const MAX_MESSAGE: usize = 4096;

/// Why a resolution failed.
#[derive(Debug)]
#[non_exhaustive]
pub(crate) enum DnsError {
    /// The socket could not be opened or used.
    Io(std::io::Error),
    /// No answer to both questions within the timeout.
    Timeout,
    /// The server answered with an error code (2 server failure, 5 refused).
    Server(u8),
    /// No nameserver configured and none in /etc/resolv.conf.
    NoServer,
    /// The host name cannot be put in a query (a label over 63 bytes).
    BadName,
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::Io(e) => write!(f, "dns: {e}"),
            DnsError::Timeout => write!(f, "dns: timeout"),
            DnsError::Server(code) => write!(f, "dns: server answered rcode {code}"),
            DnsError::NoServer => write!(f, "dns: no nameserver in /etc/resolv.conf"),
            DnsError::BadName => write!(f, "dns: invalid host name"),
        }
    }
}

impl std::error::Error for DnsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DnsError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// The first `nameserver` of /etc/resolv.conf, port 53.
pub(crate) fn system_nameserver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    nameserver_of(&text)
}

fn nameserver_of(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            return None;
        }
        // A scope suffix (fe80::1%eth0) is not supported by IpAddr; skip it.
        let ip: IpAddr = words.next()?.parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

/// The A and AAAA addresses of `name`, asked of `server`, sorted. An empty
/// list means the name exists without addresses or does not exist (NXDOMAIN).
///
/// # Errors
///
/// [`DnsError`] when there was no usable answer within `timeout`.
pub(crate) fn resolve(
    name: &str,
    server: SocketAddr,
    timeout: Duration,
) -> Result<Vec<IpAddr>, DnsError> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).map_err(DnsError::Io)?;
    socket.connect(server).map_err(DnsError::Io)?;
    let ids = [fastrand::u16(..), fastrand::u16(..)];
    let types = [TYPE_A, TYPE_AAAA];
    for (id, qtype) in ids.iter().zip(types) {
        let query = encode_query(*id, name, qtype).ok_or(DnsError::BadName)?;
        socket.send(&query).map_err(DnsError::Io)?;
    }
    let deadline = Instant::now() + timeout;
    let mut answered = [false, false];
    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    while !answered.iter().all(|a| *a) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DnsError::Timeout);
        }
        socket.set_read_timeout(Some(left)).map_err(DnsError::Io)?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(DnsError::Timeout)
            }
            Err(e) => return Err(DnsError::Io(e)),
        };
        let Some(answer) = buf.get(..n).and_then(decode_answer) else {
            continue;
        };
        let Some(slot) = ids.iter().position(|id| *id == answer.id) else {
            continue;
        };
        match answer.rcode {
            0 | 3 => {}
            code => return Err(DnsError::Server(code)),
        }
        if let Some(a) = answered.get_mut(slot) {
            *a = true;
        }
        out.extend(answer.addresses);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A query for `name` of type `qtype`, recursion desired.
fn encode_query(id: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| *l > 0 && *l < 64)?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    Some(q)
}

/// What an answer says.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    id: u16,
    rcode: u8,
    addresses: Vec<IpAddr>,
}

fn u16_at(msg: &[u8], at: usize) -> Option<u16> {
    let b = msg.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// Where the name starting at `at` ends.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return at.checked_add(1),
            l if l & 0xc0 == 0xc0 => return at.checked_add(2),
            l => at = at.checked_add(usize::from(l) + 1)?,
        }
    }
}

fn decode_answer(msg: &[u8]) -> Option<Answer> {
    let id = u16_at(msg, 0)?;
    let flags = u16_at(msg, 2)?;
    if flags & 0x8000 == 0 {
        return None; // Not a response.
    }
    let rcode = flags.to_be_bytes()[1] & 0x0f;
    let qdcount = u16_at(msg, 4)?;
    let ancount = u16_at(msg, 6)?;
    let mut at = 12usize;
    for _ in 0..qdcount {
        at = skip_name(msg, at)?.checked_add(4)?;
    }
    let mut addresses = Vec::new();
    for _ in 0..ancount {
        at = skip_name(msg, at)?;
        let rtype = u16_at(msg, at)?;
        let rdlen = usize::from(u16_at(msg, at.checked_add(8)?)?);
        let start = at.checked_add(10)?;
        let data = msg.get(start..start.checked_add(rdlen)?)?;
        match (rtype, data.len()) {
            (TYPE_A, 4) => {
                let b: [u8; 4] = data.try_into().ok()?;
                addresses.push(IpAddr::from(b));
            }
            (TYPE_AAAA, 16) => {
                let b: [u8; 16] = data.try_into().ok()?;
                addresses.push(IpAddr::from(b));
            }
            _ => {}
        }
        at = start.checked_add(rdlen)?;
    }
    Some(Answer {
        id,
        rcode,
        addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot server answering every A query with `ips` (AAAA empty).
    fn serve(ips: Vec<[u8; 4]>) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            for _ in 0..2 {
                let (n, peer) = s.recv_from(&mut buf).unwrap();
                let q = &buf[..n];
                let end = skip_name(q, 12).unwrap() + 4;
                let qtype = u16_at(q, end - 4).unwrap();
                let mut r = q[..end].to_vec();
                r[2] = 0x81;
                r[3] = 0x80;
                let answers: &[[u8; 4]] = if qtype == TYPE_A { &ips } else { &[] };
                r[6..8].copy_from_slice(&u16::try_from(answers.len()).unwrap().to_be_bytes());
                for ip in answers {
                    r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
                    r.extend_from_slice(ip);
                }
                s.send_to(&r, peer).unwrap();
            }
        });
        addr
    }

    #[test]
    fn resolves_a_records() {
        let server = serve(vec![[127, 0, 0, 3], [127, 0, 0, 2]]);
        let ips = resolve("gateways.test", server, Duration::from_secs(2)).unwrap();
        assert_eq!(
            ips,
            vec![IpAddr::from([127, 0, 0, 2]), IpAddr::from([127, 0, 0, 3])]
        );
    }

    #[test]
    fn bad_input_is_refused_not_panicked() {
        assert!(encode_query(1, "a..b", TYPE_A).is_none());
        assert!(encode_query(1, &"x".repeat(64), TYPE_A).is_none());
        for msg in [
            &[][..],
            &[0, 1, 0x80, 0, 0, 1, 0, 1],
            &[0, 1, 0x80, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0xc0],
        ] {
            let _ = decode_answer(msg);
        }
        assert_eq!(
            nameserver_of("# x\nnameserver 10.0.0.53\nnameserver 1.1.1.1\n"),
            Some("10.0.0.53:53".parse().unwrap())
        );
    }
}
