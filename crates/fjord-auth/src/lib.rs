//! SASL mechanisms for Fjord's Kafka listeners, without I/O: the SCRAM exchange
//! ([`scram`], server and client sides), PLAIN ([`plain`]) and the credentials they check,
//! derived as Kafka derives them so that credentials made by Kafka's tools work unchanged, and
//! OAUTHBEARER ([`oauth`]): the client message and the validation of its JWT against a JWKS; and
//! the limit on failed authentications per source address ([`limiter`]).
//!
//! The broker (`fjord_broker::sasl`) runs these per connection, the gateway checks its callers'
//! bearer tokens with the same validation and limiter; the CLI and the tests use the client
//! sides. Nothing here panics on what a client sends, and no password is kept beyond the
//! call that checks it.

pub mod limiter;
pub mod oauth;
pub mod plain;
pub mod scram;
