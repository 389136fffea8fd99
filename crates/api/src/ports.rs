//! Port mappings (`-p [hostip:]hostport:vmport[/tcp|udp]`), as Weave Ignite and Docker write them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Transport protocol of a port mapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One host port forwarded to a VM port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortMapping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<IpAddr>,
    pub host_port: u16,
    pub vm_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// Why a `-p` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port mapping {input:?}: {reason} (expected [hostip:]hostport:vmport[/tcp|udp])")]
pub struct PortError {
    pub input: String,
    pub reason: String,
}

impl FromStr for PortMapping {
    type Err = PortError;

    fn from_str(input: &str) -> Result<PortMapping, PortError> {
        let err = |reason: &str| PortError { input: input.into(), reason: reason.into() };
        let (spec, protocol) = match input.rsplit_once('/') {
            Some((s, "tcp")) => (s, Protocol::Tcp),
            Some((s, "udp")) => (s, Protocol::Udp),
            Some(_) => return Err(err("protocol must be tcp or udp")),
            None => (input, Protocol::Tcp),
        };
        let (bind, rest) = if let Some(r) = spec.strip_prefix('[') {
            let (ip, after) = r.split_once("]:").ok_or_else(|| err("unterminated IPv6 address"))?;
            let ip: IpAddr = ip.parse().map_err(|_| err("invalid bind address"))?;
            (Some(ip), after)
        } else {
            let parts: Vec<&str> = spec.split(':').collect();
            match parts.len() {
                2 => (None, spec),
                3 => {
                    let ip: IpAddr = parts[0].parse().map_err(|_| err("invalid bind address"))?;
                    (Some(ip), &spec[parts[0].len() + 1..])
                }
                1 => return Err(err("a host port is required")),
                _ => return Err(err("too many ':' separators")),
            }
        };
        let (h, v) = rest.split_once(':').ok_or_else(|| err("a host port is required"))?;
        let port = |s: &str, what: &str| -> Result<u16, PortError> {
            match s.parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(err(&format!("{what} must be a number from 1 to 65535"))),
            }
        };
        Ok(PortMapping { bind_address: bind, host_port: port(h, "host port")?, vm_port: port(v, "vm port")?, protocol })
    }
}

impl fmt::Display for PortMapping {
    /// Ignite's form: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bind_address {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            Some(ip) => write!(f, "{ip}")?,
            None => f.write_str("0.0.0.0")?,
        }
        write!(f, ":{}->{}/{}", self.host_port, self.vm_port, self.protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses() {
        let p: PortMapping = "8080:80".parse().unwrap();
        assert_eq!((p.host_port, p.vm_port, p.protocol, p.bind_address), (8080, 80, Protocol::Tcp, None));
        let p: PortMapping = "127.0.0.1:53:53/udp".parse().unwrap();
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.to_string(), "127.0.0.1:53->53/udp");
        let p: PortMapping = "[::1]:2222:22".parse().unwrap();
        assert_eq!(p.to_string(), "[::1]:2222->22/tcp");
    }

    #[test]
    fn rejects() {
        for bad in ["80", "0:80", "80:0", "70000:80", "a:80", "1:2/sctp", "x.y:1:2", "1:2:3:4", "[::1:1:2"] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,40}") { let _ = s.parse::<PortMapping>(); }

        #[test]
        fn roundtrip(h in 1u16.., v in 1u16.., udp: bool) {
            let proto = if udp { "udp" } else { "tcp" };
            let p: PortMapping = format!("{h}:{v}/{proto}").parse().unwrap();
            prop_assert_eq!(p.to_string(), format!("0.0.0.0:{h}->{v}/{proto}"));
        }
    }
}
