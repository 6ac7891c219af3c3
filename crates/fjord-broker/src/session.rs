//! Who is on a connection: the listener it arrived on, that listener's security protocol, the
//! peer's address and the principal it authenticated as.
//!
//! A connection's session is fixed when it opens (after the TLS handshake, for `SSL`
//! listeners) and shared by all of its requests. Handlers read the listener to answer with that
//! listener's addresses (Metadata, FindCoordinator, DescribeCluster) and the principal to name
//! the caller.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

/// Kafka's security protocols: how a listener's connections are secured and authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    /// Neither encrypted nor authenticated.
    Plaintext,
    /// TLS; a client certificate, when asked for and given, names the principal.
    Ssl,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// The protocol's name as Kafka writes it.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// Whether connections are TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SecurityProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Ok(SecurityProtocol::Plaintext),
            "SSL" => Ok(SecurityProtocol::Ssl),
            "SASL_PLAINTEXT" => Ok(SecurityProtocol::SaslPlaintext),
            "SASL_SSL" => Ok(SecurityProtocol::SaslSsl),
            other => Err(format!(
                "security protocol {other:?}: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
            )),
        }
    }
}

/// An authenticated identity, written `User:name` as in Kafka's ACLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The principal type (`User`).
    pub kind: String,
    /// The name within the type.
    pub name: String,
}

impl Principal {
    /// A user.
    pub fn user(name: impl Into<String>) -> Principal {
        Principal {
            kind: "User".into(),
            name: name.into(),
        }
    }

    /// `User:ANONYMOUS`: a connection that did not authenticate (Kafka's name for it).
    pub fn anonymous() -> Principal {
        Principal::user("ANONYMOUS")
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

/// One connection's listener, peer and principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The listener's name (e.g. `PLAINTEXT`, `EXTERNAL`).
    pub listener: Arc<str>,
    /// The listener's security protocol.
    pub protocol: SecurityProtocol,
    /// The peer's address (`None` for requests that did not come over a socket).
    pub peer: Option<SocketAddr>,
    /// Who the connection authenticated as.
    pub principal: Principal,
}

impl Session {
    /// An anonymous plaintext session on the listener named `PLAINTEXT` (tests, and requests
    /// made inside the broker).
    pub fn plaintext(peer: Option<SocketAddr>) -> Session {
        Session {
            listener: Arc::from("PLAINTEXT"),
            protocol: SecurityProtocol::Plaintext,
            peer,
            principal: Principal::anonymous(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_and_principals_read_as_in_kafka() {
        for p in [
            SecurityProtocol::Plaintext,
            SecurityProtocol::Ssl,
            SecurityProtocol::SaslPlaintext,
            SecurityProtocol::SaslSsl,
        ] {
            assert_eq!(p.name().parse::<SecurityProtocol>(), Ok(p));
        }
        assert_eq!("ssl".parse(), Ok(SecurityProtocol::Ssl));
        assert!("TLS".parse::<SecurityProtocol>().is_err());
        assert_eq!(Principal::anonymous().to_string(), "User:ANONYMOUS");
        assert_eq!(Principal::user("CN=a,O=b").to_string(), "User:CN=a,O=b");
    }
}
