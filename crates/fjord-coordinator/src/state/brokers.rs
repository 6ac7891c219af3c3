//! The broker registry's checks (registrations, leases, listener names) and its errors. The
//! registry itself is not part of [`State`]: see [`crate::embedded`].

use super::*;

/// Longest broker lease accepted, in ms (a day). Leases are meant to be a few seconds, renewed
/// often; the bound keeps `now + lease` far from overflowing.
pub const MAX_BROKER_LEASE_MS: i64 = 24 * 60 * 60 * 1000;

/// Longest broker host name or rack accepted, in bytes.
pub const MAX_BROKER_STRING_BYTES: usize = 1024;

/// Checks a broker lease: 1 to [`MAX_BROKER_LEASE_MS`] ms.
pub fn check_broker_lease(lease_ms: i64) -> Result<()> {
    if !(1..=MAX_BROKER_LEASE_MS).contains(&lease_ms) {
        return Err(CoordinatorError::Invalid(format!(
            "broker lease of {lease_ms} ms; 1 to {MAX_BROKER_LEASE_MS} ms allowed"
        )));
    }
    Ok(())
}

/// Checks a broker registration: a node id >= 0, a host of 1 to [`MAX_BROKER_STRING_BYTES`]
/// bytes, a port in 0..=65535, a rack (if any) of at most [`MAX_BROKER_STRING_BYTES`] bytes; no
/// string may hold U+0000 (PostgreSQL text cannot).
pub fn check_broker_registration(registration: &BrokerRegistration) -> Result<()> {
    let invalid = |what: String| Err(CoordinatorError::Invalid(what));
    if registration.node_id < 0 {
        return invalid(format!(
            "broker node id must be >= 0, got {}",
            registration.node_id
        ));
    }
    if !(0..=65535).contains(&registration.port) {
        return invalid(format!("broker port {} out of range", registration.port));
    }
    if registration.host.is_empty() {
        return invalid("broker host is empty".into());
    }
    let strings = [
        ("host", Some(&registration.host)),
        ("rack", registration.rack.as_ref()),
    ];
    for (what, value) in strings {
        let Some(value) = value else { continue };
        if value.len() > MAX_BROKER_STRING_BYTES || value.contains('\0') {
            return invalid(format!(
                "broker {what} must be at most {MAX_BROKER_STRING_BYTES} bytes without U+0000"
            ));
        }
    }
    if registration.listeners.len() > MAX_BROKER_LISTENERS {
        return invalid(format!(
            "a broker has at most {MAX_BROKER_LISTENERS} listeners, got {}",
            registration.listeners.len()
        ));
    }
    let mut names = BTreeSet::new();
    for l in &registration.listeners {
        if !is_listener_name(&l.name) {
            return invalid(format!(
                "listener name {:?} must be 1 to 64 letters, digits, '_' or '-'",
                l.name
            ));
        }
        if !names.insert(l.name.as_str()) {
            return invalid(format!("listener {} is named twice", l.name));
        }
        if l.host.is_empty() || l.host.len() > MAX_BROKER_STRING_BYTES || l.host.contains('\0') {
            return invalid(format!(
                "listener {} host must be 1 to {MAX_BROKER_STRING_BYTES} bytes without U+0000",
                l.name
            ));
        }
        if !(0..=65535).contains(&l.port) {
            return invalid(format!("listener {} port {} out of range", l.name, l.port));
        }
        if !SECURITY_PROTOCOLS.contains(&l.security_protocol.as_str()) {
            return invalid(format!(
                "listener {} security protocol {:?} is not one of {}",
                l.name,
                l.security_protocol,
                SECURITY_PROTOCOLS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Most listeners one broker registers.
pub const MAX_BROKER_LISTENERS: usize = 16;

/// Kafka's security protocols.
pub const SECURITY_PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

/// A listener name: 1 to 64 ASCII letters, digits, `_` or `-`.
pub fn is_listener_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The error for a node id held by another live incarnation.
pub fn broker_node_taken(node_id: i32) -> CoordinatorError {
    CoordinatorError::Invalid(format!(
        "broker node id {node_id} is held by another live incarnation"
    ))
}

/// The error for a renewal whose lease lapsed or was taken over.
pub fn broker_lease_lost(node_id: i32, incarnation: Uuid) -> CoordinatorError {
    CoordinatorError::Invalid(format!(
        "lease lost: broker {node_id} incarnation {incarnation} is not registered (its lease \
         lapsed or another incarnation took the node id); register again"
    ))
}
