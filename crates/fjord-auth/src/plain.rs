//! SASL PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`.
//!
//! Fjord checks PLAIN passwords against the user's SCRAM credentials
//! ([`crate::scram::Credential::verify_password`]), so one set of users serves every mechanism and
//! no password is ever stored. As in Kafka, an authorization id other than the user is refused.

/// A parsed PLAIN message.
#[derive(PartialEq, Eq)]
pub struct PlainMessage {
    /// The user (authcid).
    pub user: String,
    /// The password.
    pub password: Vec<u8>,
}

impl std::fmt::Debug for PlainMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainMessage")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Why a PLAIN message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlainError {
    /// Not three NUL-separated parts, an empty user or password, or a user that is not UTF-8.
    #[error("malformed PLAIN message: {0}")]
    Malformed(&'static str),
    /// An authorization id other than the user.
    #[error("an authorization id other than the user is not supported")]
    Authzid,
}

/// Parses a PLAIN message.
pub fn parse(message: &[u8]) -> Result<PlainMessage, PlainError> {
    let mut parts = message.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed(
            "expected authzid NUL user NUL password",
        ));
    };
    let user = std::str::from_utf8(user).map_err(|_| PlainError::Malformed("user is not UTF-8"))?;
    if user.is_empty() {
        return Err(PlainError::Malformed("empty user"));
    }
    if password.is_empty() {
        return Err(PlainError::Malformed("empty password"));
    }
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Err(PlainError::Authzid);
    }
    Ok(PlainMessage {
        user: user.to_string(),
        password: password.to_vec(),
    })
}

/// The PLAIN message a client sends.
pub fn encode(user: &str, password: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(user.len() + password.len() + 2);
    out.push(0);
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    out.extend_from_slice(password);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_what_clients_send() {
        let m = parse(&encode("alice", b"pw")).unwrap();
        assert_eq!(
            (m.user.as_str(), m.password.as_slice()),
            ("alice", &b"pw"[..])
        );
        let m = parse(b"alice\0alice\0pw").unwrap();
        assert_eq!(m.user, "alice");
        assert_eq!(parse(b"bob\0alice\0pw"), Err(PlainError::Authzid));
        for bad in [
            &b""[..],
            b"\0alice",
            b"\0\0pw",
            b"\0alice\0",
            b"\0a\0b\0c",
            b"\0\xff\0pw",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
