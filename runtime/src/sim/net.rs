//! The simulated network: TCP connections and UDP sockets between hosts,
//! in memory, with latency, loss, bandwidth, partitions and crashes.
//!
//! Every host has an address (10.0.0.1, ...) and a name; services connect
//! to `"name:port"` or to an address. TCP keeps each stream's bytes in
//! order (a lost segment arrives late, as a retransmission would) and
//! delivers them in segments, so readers see real chunking. A partition
//! resets the connections that cross it and blocks new ones (connects
//! time out); a crash resets its host's connections at the peers.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use deja_recorder::{
    Accepted, ConnId, Connected, Datagram, EventKind, IoErrorKind, ReadOutcome, Written,
    EVENT_PAYLOAD_BYTES_MAX,
};
use rand::Rng;
use tokio::io::ReadBuf;

use super::hash::FastMap;
use super::host::{host_ip, Host};
use super::policy::{Latency, LinkPolicy};
use super::world::{with_world, Item, World};
use crate::backend;

/// Most bytes one TCP write hands to the network (a socket send buffer's
/// worth; the caller writes the rest next).
const SEND_CHUNK_BYTES_MAX: usize = 64 << 10;
/// Bytes a sender may have in flight or unread at the peer before its
/// writes wait (flow control): keeps a slow reader from growing memory.
const TCP_WINDOW_BYTES: usize = 1 << 20;
/// Datagrams queued at a UDP socket before new ones are dropped, as a
/// full socket buffer drops them.
const UDP_QUEUE_DATAGRAMS_MAX: usize = 1024;
/// Largest UDP payload (IPv4).
const UDP_PAYLOAD_BYTES_MAX: usize = 65_507;
/// First ephemeral port handed out per host.
const EPHEMERAL_PORT_FIRST: u16 = 49_152;
/// One-way latency between two sockets of the same host.
/// Retransmissions of one TCP segment before the connection gives up
/// and resets both ends (Linux retries about 15 times over 15 minutes; a
/// simulation that loses 8 in a row has made its point).
pub(crate) const RETRANSMITS_MAX: u32 = 8;
/// The longest a retransmission timeout grows to by doubling (Linux's
/// `TCP_RTO_MAX`).
const RETRANSMIT_TIMEOUT_MAX_NS: u64 = 120_000_000_000;
const LOOPBACK_LATENCY: Latency = Latency::Fixed(std::time::Duration::from_micros(10));

/// A simulated socket, as the shim's socket types hold it (plain data:
/// the state lives in the world).
#[derive(Clone, Copy, Debug)]
pub(crate) enum SimSocket {
    Listener { host: usize, port: u16 },
    Stream { key: u64 },
    Udp { host: usize, port: u16 },
}

/// Something in flight.
#[derive(Debug)]
pub(crate) enum Packet {
    Syn {
        from: u64,
        to_host: usize,
        port: u16,
    },
    SynAck {
        to: u64,
        result: Result<(), io::ErrorKind>,
    },
    ConnectTimeout {
        key: u64,
    },
    Data {
        to: u64,
        bytes: Vec<u8>,
    },
    Fin {
        to: u64,
    },
    Rst {
        to: u64,
    },
    Datagram {
        to_host: usize,
        port: u16,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
}

#[derive(Debug, Default)]
struct Listener {
    backlog: VecDeque<u64>,
    waker: Option<Waker>,
}

#[derive(Debug)]
enum Connecting {
    Waiting(Option<Waker>),
    Done(Result<(), io::ErrorKind>),
}

/// One end of a TCP connection. Ends come in pairs: the connecting end
/// has an even key, the accepted end the next odd one.
#[derive(Debug)]
struct End {
    host: usize,
    peer_host: usize,
    local: SocketAddr,
    peer: SocketAddr,
    recv: VecDeque<u8>,
    fin: bool,
    reset: bool,
    write_closed: bool,
    connecting: Option<Connecting>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// Bytes this end sent that the peer has not read yet.
    unread_by_peer: usize,
    /// Arrival time of this end's last segment: later ones never overtake it.
    last_arrival: u64,
    /// When this end's link direction is free again (bandwidth).
    busy_until: u64,
}

#[derive(Debug, Default)]
struct UdpQueue {
    datagrams: VecDeque<(SocketAddr, Vec<u8>)>,
    waker: Option<Waker>,
}

/// The network's state and policy.
#[derive(Debug)]
pub(crate) struct Net {
    names: Vec<String>,
    default_policy: LinkPolicy,
    /// A host's traffic to itself.
    loopback_policy: LinkPolicy,
    links: FastMap<(usize, usize), LinkPolicy>,
    connect_timeout: u64,
    partitions: BTreeSet<(usize, usize)>,
    /// Links on hold: their packets wait in `held`, in arrival order,
    /// until the link heals; connections stay up.
    holds: BTreeSet<(usize, usize)>,
    held: BTreeMap<(usize, usize), Vec<Packet>>,
    listeners: BTreeMap<(usize, u16), Listener>,
    /// Iterated only through [`Net::ends_where`], in key order.
    ends: FastMap<u64, End>,
    udp: BTreeMap<(usize, u16), UdpQueue>,
    next_key: u64,
    next_port: Vec<u16>,
    /// Datagrams dropped (loss, partitions, full queues), for the report.
    pub(crate) dropped_datagrams: u64,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Net {
    pub(crate) fn new(
        names: Vec<String>,
        default_policy: LinkPolicy,
        links: HashMap<(usize, usize), LinkPolicy>,
        connect_timeout: u64,
    ) -> Net {
        let hosts = names.len();
        Net {
            names,
            default_policy,
            loopback_policy: LinkPolicy {
                latency: LOOPBACK_LATENCY,
                ..LinkPolicy::default()
            },
            links: links
                .into_iter()
                .map(|((a, b), p)| (pair(a, b), p))
                .collect(),
            connect_timeout,
            partitions: BTreeSet::new(),
            holds: BTreeSet::new(),
            held: BTreeMap::new(),
            listeners: BTreeMap::new(),
            ends: FastMap::default(),
            udp: BTreeMap::new(),
            next_key: 0,
            next_port: vec![EPHEMERAL_PORT_FIRST; hosts],
            dropped_datagrams: 0,
        }
    }

    fn policy(&self, a: usize, b: usize) -> &LinkPolicy {
        if a == b {
            return &self.loopback_policy;
        }
        if self.links.is_empty() {
            return &self.default_policy;
        }
        self.links.get(&pair(a, b)).unwrap_or(&self.default_policy)
    }

    /// The keys of the ends `keep` picks, in key order: what happens to
    /// them (resets, their wakers, latency draws) must not follow the
    /// hash table's order.
    fn ends_where(&self, keep: impl Fn(&End) -> bool) -> Vec<u64> {
        let mut keys: Vec<u64> = self
            .ends
            .iter()
            .filter(|(_, end)| keep(end))
            .map(|(key, _)| *key)
            .collect();
        keys.sort_unstable();
        keys
    }

    pub(crate) fn partitioned(&self, a: usize, b: usize) -> bool {
        a != b && self.partitions.contains(&pair(a, b))
    }

    /// Cut the link between `a` and `b`: connections across it reset.
    pub(crate) fn partition(&mut self, _world: &World, a: usize, b: usize) {
        if a == b {
            return;
        }
        self.partitions.insert(pair(a, b));
        for key in self.ends_where(|end| pair(end.host, end.peer_host) == pair(a, b)) {
            if let Some(end) = self.ends.get_mut(&key) {
                reset(end);
            }
        }
    }

    /// Hold the link between `a` and `b`: packets across it wait until
    /// it heals, then arrive in the order they were sent. Connections
    /// stay up; a connect across it times out if the hold outlasts
    /// `connect_timeout`, as a SYN into a black hole does.
    pub(crate) fn hold(&mut self, a: usize, b: usize) {
        if a != b {
            self.holds.insert(pair(a, b));
        }
    }

    pub(crate) fn heal(&mut self, world: &World, a: usize, b: usize) {
        let link = pair(a, b);
        self.partitions.remove(&link);
        self.holds.remove(&link);
        self.release(world, link);
    }

    pub(crate) fn heal_all(&mut self, world: &World) {
        self.partitions.clear();
        self.holds.clear();
        let links: Vec<(usize, usize)> = self.held.keys().copied().collect();
        for link in links {
            self.release(world, link);
        }
    }

    /// A held link's packets leave, one latency from now, in the order
    /// they arrived at the hold (the agenda keeps insertion order among
    /// equal times).
    fn release(&mut self, world: &World, link: (usize, usize)) {
        let Some(packets) = self.held.remove(&link) else {
            return;
        };
        let at = world.now() + self.draw_latency(world, link.0, link.1);
        for packet in packets {
            world.schedule(at, Item::Packet(packet));
        }
    }

    /// The link a packet crosses, if it crosses one (not a local timer,
    /// not a host's traffic to itself).
    fn link_of(&self, packet: &Packet) -> Option<(usize, usize)> {
        let (a, b) = match packet {
            Packet::ConnectTimeout { .. } => return None,
            Packet::Syn { from, to_host, .. } => (self.ends.get(from)?.host, *to_host),
            Packet::SynAck { to, .. }
            | Packet::Data { to, .. }
            | Packet::Fin { to }
            | Packet::Rst { to } => {
                let end = self.ends.get(to)?;
                (end.host, end.peer_host)
            }
            Packet::Datagram { to_host, from, .. } => {
                (self.host_of_ip(*to_host, from.ip())?, *to_host)
            }
        };
        (a != b).then(|| pair(a, b))
    }

    /// Host `index` is gone: its sockets vanish, its peers get resets.
    pub(crate) fn crash_host(&mut self, world: &World, index: usize) {
        for key in self.ends_where(|end| end.host == index) {
            if let Some(end) = self.ends.remove(&key) {
                if self.ends.contains_key(&(key ^ 1)) {
                    let at = world.now() + self.draw_latency(world, index, end.peer_host);
                    world.schedule(at, Item::Packet(Packet::Rst { to: key ^ 1 }));
                }
            }
        }
        self.listeners.retain(|(host, _), _| *host != index);
        self.udp.retain(|(host, _), _| *host != index);
    }

    fn draw_latency(&self, world: &World, a: usize, b: usize) -> u64 {
        let latency = self.policy(a, b).latency;
        world.with_rng(|rng| latency.draw(rng))
    }

    fn ephemeral_port(&mut self, host: usize) -> u16 {
        // Bounded: at most every port once.
        for _ in 0..=u16::MAX {
            let port = self.next_port[host];
            self.next_port[host] = port.checked_add(1).unwrap_or(EPHEMERAL_PORT_FIRST);
            if !self.listeners.contains_key(&(host, port)) && !self.udp.contains_key(&(host, port))
            {
                return port;
            }
        }
        EPHEMERAL_PORT_FIRST
    }

    /// Which port of `host` a bind to `text` takes.
    fn bind_port(&mut self, host: usize, text: &str, udp: bool) -> io::Result<u16> {
        let (ip, port) = split_host_port(text)?;
        let own = host_ip(host);
        let local = match ip.parse::<IpAddr>() {
            Ok(ip) => ip.is_unspecified() || ip.is_loopback() || ip == own,
            Err(_) => ip == "localhost" || ip == self.names[host],
        };
        if !local {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!(
                    "{text}: not an address of simulated host {}",
                    self.names[host]
                ),
            ));
        }
        let taken = |net: &Net, port| {
            if udp {
                net.udp.contains_key(&(host, port))
            } else {
                net.listeners.contains_key(&(host, port))
            }
        };
        if port == 0 {
            return Ok(self.ephemeral_port(host));
        }
        if taken(self, port) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        Ok(port)
    }

    /// The host `ip` is, as seen from `from`: an index, not a name, so a
    /// datagram's destination needs no formatting and parsing.
    fn host_of_ip(&self, from: usize, ip: IpAddr) -> Option<usize> {
        if ip.is_loopback() || ip.is_unspecified() {
            return Some(from);
        }
        let IpAddr::V4(v4) = ip else {
            return None;
        };
        // Hosts are 10.0.0.1, 10.0.0.2, ... (see `host_ip`).
        let index = u32::from(v4).checked_sub(0x0a00_0001)? as usize;
        (index < self.names.len() && host_ip(index) == ip).then_some(index)
    }

    /// The host and port `text` names, as seen from `from`.
    fn resolve(&self, from: usize, text: &str) -> io::Result<(usize, u16)> {
        let (name, port) = split_host_port(text)?;
        let host = match name.parse::<IpAddr>() {
            Ok(ip) => self.host_of_ip(from, ip),
            Err(_) if name == "localhost" => Some(from),
            Err(_) => self.names.iter().position(|known| known == name),
        };
        match host {
            Some(host) => Ok((host, port)),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{text}: no simulated host has this name or address"),
            )),
        }
    }

    /// Schedule `bytes` from end `key` to its peer; returns when it lands.
    fn send_segment(&mut self, world: &World, key: u64, bytes: Vec<u8>) {
        let Some(end) = self.ends.get(&key) else {
            return;
        };
        let (a, b) = (end.host, end.peer_host);
        let policy = self.policy(a, b);
        let (bandwidth, loss, split_writes, retransmit) = (
            policy.bandwidth,
            policy.loss,
            policy.split_writes,
            policy.retransmit,
        );
        let latency = policy.latency;
        let now = world.now();
        let len = bytes.len() as u64;
        let transmit = bandwidth.map_or(0, |bw| len.saturating_mul(1_000_000_000) / bw);
        let (latency, losses, split) = world.with_rng(|rng| {
            let latency = latency.draw(rng);
            // Each retransmission may be lost too.
            let mut losses = 0;
            while loss > 0.0 && losses < RETRANSMITS_MAX && rng.random_bool(loss) {
                losses += 1;
            }
            let split = (split_writes > 0.0 && bytes.len() > 1 && rng.random_bool(split_writes))
                .then(|| rng.random_range(1..bytes.len()));
            (latency, losses, split)
        });
        let retransmit = backoff_ns(retransmit, losses);
        let end = self.ends.get_mut(&key).expect("checked above");
        let start = now.max(end.busy_until);
        end.busy_until = start.saturating_add(transmit);
        let arrival = end
            .busy_until
            .saturating_add(latency)
            .saturating_add(retransmit)
            .max(end.last_arrival);
        end.last_arrival = arrival;
        let to = key ^ 1;
        if losses == RETRANSMITS_MAX {
            // TCP gives up: both ends see the connection reset.
            world.schedule(arrival, Item::Packet(Packet::Rst { to }));
            world.schedule(arrival, Item::Packet(Packet::Rst { to: key }));
            return;
        }
        match split {
            Some(cut) => {
                let mut first = bytes;
                let second = first.split_off(cut);
                world.schedule(arrival, Item::Packet(Packet::Data { to, bytes: first }));
                world.schedule(arrival, Item::Packet(Packet::Data { to, bytes: second }));
            }
            None => world.schedule(arrival, Item::Packet(Packet::Data { to, bytes })),
        }
    }

    /// A packet arrives; returns the wakers to wake.
    pub(crate) fn deliver(&mut self, world: &World, packet: Packet) -> Vec<Waker> {
        let mut wake = Vec::new();
        if !self.holds.is_empty() {
            if let Some(link) = self
                .link_of(&packet)
                .filter(|link| self.holds.contains(link))
            {
                self.held.entry(link).or_default().push(packet);
                return wake;
            }
        }
        match packet {
            Packet::Syn {
                from,
                to_host,
                port,
            } => {
                let Some(client) = self.ends.get(&from) else {
                    return wake;
                };
                if self.partitioned(client.host, to_host) {
                    return wake; // lost: the connect times out
                }
                let (client_host, client_local, server) = (client.host, client.local, client.peer);
                let result = match self.listeners.get_mut(&(to_host, port)) {
                    Some(listener) => {
                        listener.backlog.push_back(from ^ 1);
                        wake.extend(listener.waker.take());
                        self.ends.insert(
                            from ^ 1,
                            new_end(to_host, client_host, server, client_local, None),
                        );
                        Ok(())
                    }
                    None => Err(io::ErrorKind::ConnectionRefused),
                };
                let at = world.now() + self.draw_latency(world, client_host, to_host);
                world.schedule(at, Item::Packet(Packet::SynAck { to: from, result }));
            }
            Packet::SynAck { to, result } => {
                if let Some(end) = self.ends.get_mut(&to) {
                    if let Some(Connecting::Waiting(waker)) = &mut end.connecting {
                        wake.extend(waker.take());
                        end.connecting = Some(Connecting::Done(result));
                    }
                }
            }
            Packet::ConnectTimeout { key } => {
                if let Some(end) = self.ends.get_mut(&key) {
                    if let Some(Connecting::Waiting(waker)) = &mut end.connecting {
                        wake.extend(waker.take());
                        end.connecting = Some(Connecting::Done(Err(io::ErrorKind::TimedOut)));
                    }
                }
            }
            Packet::Data { to, bytes } => match self.ends.get_mut(&to) {
                Some(end) if !end.reset => {
                    end.recv.extend(bytes);
                    wake.extend(end.read_waker.take());
                }
                Some(_) => {}
                None => {
                    // The reader is gone: the sender gets a reset, as TCP does.
                    if let Some(sender) = self.ends.get(&(to ^ 1)) {
                        let (a, b) = (sender.host, sender.peer_host);
                        let at = world.now() + self.draw_latency(world, a, b);
                        world.schedule(at, Item::Packet(Packet::Rst { to: to ^ 1 }));
                    }
                }
            },
            Packet::Fin { to } => {
                if let Some(end) = self.ends.get_mut(&to) {
                    end.fin = true;
                    wake.extend(end.read_waker.take());
                }
            }
            Packet::Rst { to } => {
                if let Some(end) = self.ends.get_mut(&to) {
                    reset(end);
                }
            }
            Packet::Datagram {
                to_host,
                port,
                from,
                bytes,
            } => match self.udp.get_mut(&(to_host, port)) {
                Some(queue) if queue.datagrams.len() < UDP_QUEUE_DATAGRAMS_MAX => {
                    queue.datagrams.push_back((from, bytes));
                    wake.extend(queue.waker.take());
                }
                _ => self.dropped_datagrams += 1,
            },
        }
        wake
    }
}

/// How late a segment lost `losses` times in a row arrives: the
/// retransmission timeout doubles after each loss (exponential backoff),
/// up to [`RETRANSMIT_TIMEOUT_MAX_NS`].
fn backoff_ns(timeout: std::time::Duration, losses: u32) -> u64 {
    let mut rto = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let mut total: u64 = 0;
    for _ in 0..losses {
        total = total.saturating_add(rto);
        rto = rto.saturating_mul(2).min(RETRANSMIT_TIMEOUT_MAX_NS);
    }
    total
}

fn new_end(
    host: usize,
    peer_host: usize,
    local: SocketAddr,
    peer: SocketAddr,
    connecting: Option<Connecting>,
) -> End {
    End {
        host,
        peer_host,
        local,
        peer,
        recv: VecDeque::new(),
        fin: false,
        reset: false,
        write_closed: false,
        connecting,
        read_waker: None,
        write_waker: None,
        unread_by_peer: 0,
        last_arrival: 0,
        busy_until: 0,
    }
}

fn reset(end: &mut End) {
    end.reset = true;
    for waker in [end.read_waker.take(), end.write_waker.take()]
        .into_iter()
        .flatten()
    {
        waker.wake();
    }
    if let Some(Connecting::Waiting(waker)) = &mut end.connecting {
        if let Some(waker) = waker.take() {
            waker.wake();
        }
        end.connecting = Some(Connecting::Done(Err(io::ErrorKind::ConnectionReset)));
    }
}

fn split_host_port(text: &str) -> io::Result<(&str, u16)> {
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{text}: expected host:port"),
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let port = port.parse::<u16>().map_err(|_| invalid())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host, port))
}

// --- what the shim's sockets call, on the simulated host running now ---

/// The host running now; sockets are only usable on their simulation's
/// thread.
pub(crate) fn current_host() -> io::Result<Rc<Host>> {
    backend::current_mode::<Host>()
        .ok_or_else(|| io::Error::other("a simulated socket was used outside its simulation"))
}

fn with_net<R>(f: impl FnOnce(&World, &mut Net) -> R) -> io::Result<R> {
    with_world(|world| f(world, &mut world.net.borrow_mut()))
        .ok_or_else(|| io::Error::other("the simulation this socket belongs to has ended"))
}

/// Wait until `poll`, run on the network with the task's waker, is ready.
async fn net_wait<T>(
    mut poll: impl FnMut(&mut Net, &Waker) -> Poll<io::Result<T>>,
) -> io::Result<T> {
    std::future::poll_fn(|cx| match with_net(|_, net| poll(net, cx.waker())) {
        Ok(polled) => polled,
        Err(err) => Poll::Ready(Err(err)),
    })
    .await
}

/// Take the first of a socket's queue, or park the task until one comes.
/// No queue: the socket was closed under the task.
fn pop_or_park<T>(
    queue: Option<(&mut VecDeque<T>, &mut Option<Waker>)>,
    waker: &Waker,
) -> Poll<io::Result<T>> {
    match queue {
        Some((items, parked)) => match items.pop_front() {
            Some(item) => Poll::Ready(Ok(item)),
            None => {
                *parked = Some(waker.clone());
                Poll::Pending
            }
        },
        None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
    }
}

fn kind(err: &io::Error) -> IoErrorKind {
    err.kind().into()
}

/// `TcpListener::bind` on a simulated host.
pub(crate) fn tcp_bind(text: &str) -> io::Result<(ConnId, SocketAddr, SimSocket)> {
    let host = current_host()?;
    let bound = with_net(|_, net| {
        let port = net.bind_port(host.index, text, false)?;
        net.listeners
            .insert((host.index, port), Listener::default());
        Ok::<_, io::Error>(port)
    })
    .and_then(|bound| bound);
    let listener = host.next_conn();
    let local = bound.as_ref().map(|port| SocketAddr::new(host.ip, *port));
    host.record(EventKind::TcpListen {
        listener,
        addr: text.to_string(),
        result: local.as_ref().copied().map_err(|err| kind(err)),
    });
    let port = bound?;
    Ok((
        listener,
        SocketAddr::new(host.ip, port),
        SimSocket::Listener {
            host: host.index,
            port,
        },
    ))
}

/// `TcpListener::accept`.
pub(crate) async fn tcp_accept(
    listener: ConnId,
    socket: SimSocket,
) -> io::Result<(ConnId, SocketAddr, SocketAddr, SimSocket)> {
    let SimSocket::Listener { host: index, port } = socket else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    let key = net_wait(|net, waker| {
        let listener = net.listeners.get_mut(&(index, port));
        pop_or_park(listener.map(|l| (&mut l.backlog, &mut l.waker)), waker)
    })
    .await;
    let host = current_host()?;
    let addrs = key.and_then(|key| {
        with_net(|_, net| net.ends.get(&key).map(|end| (key, end.local, end.peer)))?
            .ok_or_else(|| io::Error::from(io::ErrorKind::ConnectionAborted))
    });
    let conn = addrs.as_ref().ok().map(|_| host.next_conn());
    host.record(EventKind::TcpAccept {
        listener,
        result: match (&addrs, conn) {
            (Ok((_, local, peer)), Some(conn)) => Ok(Accepted {
                conn,
                peer: *peer,
                local: *local,
            }),
            (Err(err), _) => Err(kind(err)),
            (Ok(_), None) => Err(IoErrorKind::Other),
        },
    });
    let (key, local, peer) = addrs?;
    Ok((
        conn.expect("set with addrs"),
        local,
        peer,
        SimSocket::Stream { key },
    ))
}

/// `TcpStream::connect`.
pub(crate) async fn tcp_connect(
    text: &str,
) -> io::Result<(ConnId, SocketAddr, SocketAddr, SimSocket)> {
    // Not held across the await: the future must stay `Send`.
    let (index, ip) = {
        let host = current_host()?;
        (host.index, host.ip)
    };
    let started = with_net(|world, net| {
        let (to_host, port) = net.resolve(index, text)?;
        let key = net.next_key;
        net.next_key += 2;
        let local = SocketAddr::new(ip, net.ephemeral_port(index));
        let peer = SocketAddr::new(host_ip(to_host), port);
        net.ends.insert(
            key,
            new_end(index, to_host, local, peer, Some(Connecting::Waiting(None))),
        );
        let now = world.now();
        if !net.partitioned(index, to_host) {
            let at = now + net.draw_latency(world, index, to_host);
            world.schedule(
                at,
                Item::Packet(Packet::Syn {
                    from: key,
                    to_host,
                    port,
                }),
            );
        }
        world.schedule(
            now + net.connect_timeout,
            Item::Packet(Packet::ConnectTimeout { key }),
        );
        Ok::<_, io::Error>((key, local, peer))
    })
    .and_then(|started| started);
    let connected = match started {
        Ok((key, local, peer)) => net_wait(|net, parked| {
            let Some(end) = net.ends.get_mut(&key) else {
                return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
            };
            match &mut end.connecting {
                Some(Connecting::Done(result)) => {
                    let result = *result;
                    end.connecting = None;
                    if result.is_err() {
                        net.ends.remove(&key);
                    }
                    Poll::Ready(result.map_err(io::Error::from))
                }
                Some(Connecting::Waiting(waker)) => {
                    *waker = Some(parked.clone());
                    Poll::Pending
                }
                None => Poll::Ready(Ok(())),
            }
        })
        .await
        .map(|()| (key, local, peer)),
        Err(err) => Err(err),
    };
    let host = current_host()?;
    let conn = host.next_conn();
    host.record(EventKind::TcpConnect {
        conn,
        addr: text.to_string(),
        result: match &connected {
            Ok((_, local, peer)) => Ok(Connected {
                local: *local,
                peer: *peer,
            }),
            Err(err) => Err(kind(err)),
        },
    });
    let (key, local, peer) = connected?;
    Ok((conn, local, peer, SimSocket::Stream { key }))
}

/// `poll_read` of a simulated stream.
pub(crate) fn poll_read(
    key: u64,
    conn: ConnId,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if buf.remaining() == 0 {
        return Poll::Ready(Ok(()));
    }
    let limit = buf.remaining().min(EVENT_PAYLOAD_BYTES_MAX);
    let polled = with_net(|_, net| {
        let Some(end) = net.ends.get_mut(&key) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected));
        };
        if !end.recv.is_empty() {
            let n = limit.min(end.recv.len());
            let bytes: Vec<u8> = end.recv.drain(..n).collect();
            if let Some(peer) = net.ends.get_mut(&(key ^ 1)) {
                peer.unread_by_peer = peer.unread_by_peer.saturating_sub(n);
                if let Some(waker) = peer.write_waker.take() {
                    waker.wake();
                }
            }
            return Poll::Ready(Ok(ReadOutcome::Data(bytes)));
        }
        if end.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset));
        }
        if end.fin {
            return Poll::Ready(Ok(ReadOutcome::Eof));
        }
        end.read_waker = Some(cx.waker().clone());
        Poll::Pending
    });
    let outcome = match polled {
        Ok(Poll::Pending) => return Poll::Pending,
        Ok(Poll::Ready(outcome)) => outcome,
        Err(err) => return Poll::Ready(Err(err)),
    };
    let host = match current_host() {
        Ok(host) => host,
        Err(err) => return Poll::Ready(Err(err)),
    };
    match outcome {
        Ok(outcome) => {
            if let ReadOutcome::Data(bytes) = &outcome {
                buf.put_slice(bytes);
            }
            host.record(EventKind::TcpRead {
                conn,
                result: outcome,
            });
            Poll::Ready(Ok(()))
        }
        Err(kind) => {
            host.record(EventKind::TcpRead {
                conn,
                result: ReadOutcome::Error(kind.into()),
            });
            Poll::Ready(Err(kind.into()))
        }
    }
}

/// `poll_write` of a simulated stream.
pub(crate) fn poll_write(
    key: u64,
    conn: ConnId,
    cx: &mut Context<'_>,
    buf: &[u8],
    keep_bytes: bool,
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        return Poll::Ready(Ok(0));
    }
    let polled = with_net(|world, net| {
        let Some(end) = net.ends.get_mut(&key) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected));
        };
        if end.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset));
        }
        if end.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe));
        }
        let room = TCP_WINDOW_BYTES.saturating_sub(end.unread_by_peer);
        if room == 0 {
            end.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(SEND_CHUNK_BYTES_MAX).min(room);
        end.unread_by_peer += n;
        net.send_segment(world, key, buf[..n].to_vec());
        Poll::Ready(Ok(n))
    });
    let result = match polled {
        Ok(Poll::Pending) => return Poll::Pending,
        Ok(Poll::Ready(result)) => result.map_err(io::Error::from),
        Err(err) => Err(err),
    };
    if let Ok(host) = current_host() {
        host.record(EventKind::TcpWrite {
            conn,
            result: match &result {
                Ok(n) => Ok(Written::of(&buf[..*n], keep_bytes)),
                Err(err) => Err(kind(err)),
            },
        });
    }
    Poll::Ready(result)
}

/// `poll_shutdown`: the peer reads EOF after the bytes already sent.
pub(crate) fn shutdown(key: u64, conn: ConnId) -> io::Result<()> {
    let result = with_net(|world, net| {
        let Some(end) = net.ends.get_mut(&key) else {
            return Err(io::ErrorKind::NotConnected);
        };
        if end.reset {
            return Err(io::ErrorKind::ConnectionReset);
        }
        if !end.write_closed {
            end.write_closed = true;
            send_fin(world, net, key);
        }
        Ok(())
    })
    .and_then(|result| result.map_err(io::Error::from));
    if let Ok(host) = current_host() {
        host.record(EventKind::TcpShutdown {
            conn,
            result: result.as_ref().map(|_| ()).map_err(kind),
        });
    }
    result
}

fn send_fin(world: &World, net: &mut Net, key: u64) {
    let Some(end) = net.ends.get(&key) else {
        return;
    };
    let (a, b) = (end.host, end.peer_host);
    let at = (world.now() + net.draw_latency(world, a, b)).max(end.last_arrival);
    world.schedule(at, Item::Packet(Packet::Fin { to: key ^ 1 }));
}

/// The last handle to a simulated socket dropped.
pub(crate) fn close(socket: SimSocket) {
    let _ = with_net(|world, net| match socket {
        SimSocket::Stream { key } => {
            if let Some(end) = net.ends.get(&key) {
                if !end.write_closed && !end.reset {
                    send_fin(world, net, key);
                }
            }
            net.ends.remove(&key);
        }
        SimSocket::Listener { host, port } => {
            if let Some(listener) = net.listeners.remove(&(host, port)) {
                for key in listener.backlog {
                    if let Some(end) = net.ends.remove(&key) {
                        let at = world.now() + net.draw_latency(world, host, end.peer_host);
                        world.schedule(at, Item::Packet(Packet::Rst { to: key ^ 1 }));
                    }
                }
            }
        }
        SimSocket::Udp { host, port } => {
            net.udp.remove(&(host, port));
        }
    });
}

/// `lookup_host`: a simulated host's name resolves to its address
/// (`"payment:7000"` to `10.0.0.2:7000`), an address to itself.
pub(crate) fn lookup(text: &str) -> io::Result<Vec<SocketAddr>> {
    let host = current_host()?;
    let answer = match text.parse::<SocketAddr>() {
        Ok(addr) => Ok(vec![addr]),
        Err(_) => with_net(|_, net| {
            let (index, port) = net.resolve(host.index, text)?;
            let ip = if index == host.index && split_host_port(text)?.0 == "localhost" {
                IpAddr::from([127, 0, 0, 1])
            } else {
                host_ip(index)
            };
            Ok::<_, io::Error>(vec![SocketAddr::new(ip, port)])
        })
        .and_then(|answer| answer),
    };
    host.record(EventKind::Lookup {
        host: text.to_string(),
        result: answer.as_ref().map(Clone::clone).map_err(kind),
    });
    answer
}

/// `UdpSocket::bind`.
pub(crate) fn udp_bind(text: &str) -> io::Result<(ConnId, SocketAddr, SimSocket)> {
    let host = current_host()?;
    let bound = with_net(|_, net| {
        let port = net.bind_port(host.index, text, true)?;
        net.udp.insert((host.index, port), UdpQueue::default());
        Ok::<_, io::Error>(port)
    })
    .and_then(|bound| bound);
    let socket = host.next_conn();
    host.record(EventKind::UdpBind {
        socket,
        addr: text.to_string(),
        result: bound
            .as_ref()
            .map(|port| SocketAddr::new(host.ip, *port))
            .map_err(kind),
    });
    let port = bound?;
    Ok((
        socket,
        SocketAddr::new(host.ip, port),
        SimSocket::Udp {
            host: host.index,
            port,
        },
    ))
}

/// `UdpSocket::send_to`: loss, duplication and reordering happen here.
pub(crate) fn udp_send(
    socket: ConnId,
    local: SocketAddr,
    buf: &[u8],
    target: SocketAddr,
    keep_bytes: bool,
) -> io::Result<usize> {
    let host = current_host()?;
    let sent = if buf.len() > UDP_PAYLOAD_BYTES_MAX {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message too long for a UDP datagram",
        ))
    } else {
        with_net(|world, net| {
            let to_host = net.host_of_ip(host.index, target.ip()).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{target}: no simulated host has this name or address"),
                )
            })?;
            let port = target.port();
            if net.partitioned(host.index, to_host) {
                net.dropped_datagrams += 1;
                return Ok(buf.len());
            }
            let policy = net.policy(host.index, to_host);
            // At most two copies, drawn in order; no allocation per datagram.
            let copies: [Option<u64>; 2] = world.with_rng(|rng| {
                if policy.loss > 0.0 && rng.random_bool(policy.loss) {
                    return [None, None];
                }
                let twice = policy.duplicate > 0.0 && rng.random_bool(policy.duplicate);
                let mut draw = || {
                    let mut latency = policy.latency.draw(rng);
                    if policy.reorder > 0.0 && rng.random_bool(policy.reorder) {
                        let window =
                            u64::try_from(policy.reorder_window.as_nanos()).unwrap_or(u64::MAX);
                        latency = latency.saturating_add(rng.random_range(0..=window));
                    }
                    latency
                };
                let first = draw();
                [Some(first), twice.then(draw)]
            });
            if copies[0].is_none() {
                net.dropped_datagrams += 1;
            }
            for latency in copies.into_iter().flatten() {
                world.schedule(
                    world.now().saturating_add(latency),
                    Item::Packet(Packet::Datagram {
                        to_host,
                        port,
                        from: local,
                        bytes: buf.to_vec(),
                    }),
                );
            }
            Ok::<_, io::Error>(buf.len())
        })
        .and_then(|sent| sent)
    };
    host.record(EventKind::UdpSend {
        socket,
        peer: target,
        result: match &sent {
            Ok(n) => Ok(Written::of(&buf[..*n], keep_bytes)),
            Err(err) => Err(kind(err)),
        },
    });
    sent
}

/// `UdpSocket::recv_from`: the datagram is cut to `buf`, as the OS does.
pub(crate) fn poll_udp_recv(
    socket: ConnId,
    sim: SimSocket,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<(usize, SocketAddr)>> {
    let SimSocket::Udp { host: index, port } = sim else {
        return Poll::Ready(Err(io::ErrorKind::InvalidInput.into()));
    };
    let received = match with_net(|_, net| {
        let queue = net.udp.get_mut(&(index, port));
        pop_or_park(queue.map(|q| (&mut q.datagrams, &mut q.waker)), cx.waker())
    }) {
        Ok(Poll::Pending) => return Poll::Pending,
        Ok(Poll::Ready(received)) => received,
        Err(err) => Err(err),
    };
    Poll::Ready(record_udp_recv(socket, received, buf))
}

/// Hand a received datagram to `buf` and log it.
fn record_udp_recv(
    socket: ConnId,
    received: io::Result<(SocketAddr, Vec<u8>)>,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    let host = current_host()?;
    let received = received.map(|(peer, bytes)| {
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        (n, peer)
    });
    host.record(EventKind::UdpRecv {
        socket,
        result: match &received {
            Ok((n, peer)) => Ok(Datagram {
                peer: *peer,
                bytes: buf[..*n].to_vec(),
            }),
            Err(err) => Err(kind(err)),
        },
    });
    received
}

/// The write half of a stream dropped: the peer reads EOF (not logged,
/// as with a real socket).
pub(crate) fn half_close(key: u64) {
    let _ = with_net(|world, net| {
        if let Some(end) = net.ends.get_mut(&key) {
            if !end.write_closed && !end.reset {
                end.write_closed = true;
                send_fin(world, net, key);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmission_timeouts_double_up_to_the_cap() {
        let rto = std::time::Duration::from_millis(200);
        assert_eq!(backoff_ns(rto, 0), 0);
        assert_eq!(backoff_ns(rto, 1), 200_000_000);
        assert_eq!(backoff_ns(rto, 3), 1_400_000_000);
        let long = std::time::Duration::from_secs(100);
        // 100 s, then capped at 120 s.
        assert_eq!(backoff_ns(long, 3), 340_000_000_000);
        assert_eq!(backoff_ns(std::time::Duration::MAX, 2), u64::MAX);
    }
}
