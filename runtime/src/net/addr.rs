//! Addresses as the service gives them, kept verbatim in the log.

use std::net::{IpAddr, SocketAddr};

/// Something `bind`/`connect` accept: `"host:port"`, a `SocketAddr`, or
/// `(ip, port)`. The text form is what the log records and replay compares.
pub trait ToAddr {
    /// The address as text, for example `127.0.0.1:7000`.
    fn to_addr_string(&self) -> String;

    /// The address, when it is one already: sending a datagram to a
    /// `SocketAddr` neither formats nor parses it.
    fn to_socket_addr(&self) -> Option<SocketAddr> {
        None
    }
}

impl ToAddr for str {
    fn to_addr_string(&self) -> String {
        self.to_string()
    }
}

impl ToAddr for String {
    fn to_addr_string(&self) -> String {
        self.clone()
    }
}

impl ToAddr for SocketAddr {
    fn to_addr_string(&self) -> String {
        self.to_string()
    }

    fn to_socket_addr(&self) -> Option<SocketAddr> {
        Some(*self)
    }
}

impl ToAddr for (IpAddr, u16) {
    fn to_addr_string(&self) -> String {
        SocketAddr::from(*self).to_string()
    }

    fn to_socket_addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::from(*self))
    }
}

impl ToAddr for (&str, u16) {
    fn to_addr_string(&self) -> String {
        format!("{}:{}", self.0, self.1)
    }
}

impl<T: ToAddr + ?Sized> ToAddr for &T {
    fn to_addr_string(&self) -> String {
        (**self).to_addr_string()
    }

    fn to_socket_addr(&self) -> Option<SocketAddr> {
        (**self).to_socket_addr()
    }
}
