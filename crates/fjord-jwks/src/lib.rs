//! JSON Web Key Sets for Fjord's bearer tokens (the broker's SASL/OAUTHBEARER and the gateway's
//! `authorization: Bearer` callers):
//! - [`JwksSource`]: where the set is (`file://`, `https://`, `http://`);
//! - [`JwksLoader`]: reads or fetches it (bounded size and time), telling whether a file changed;
//! - [`run`]: the named, cancellable task that keeps a [`tokio::sync::watch`] of the set fresh
//!   (on a timer, and at once when asked); a reload that fails keeps the previous set;
//! - [`Verifier`]: checks a token against the current set with `fjord_auth::oauth`, asking for a
//!   reload (at most every [`UNKNOWN_KID_REFRESH_INTERVAL_MS`]) when it meets an unknown `kid`.
//!
//! Validation itself (signatures, claims) is `fjord_auth::oauth`, which does no I/O and reads
//! no clock: time is always the caller's.

mod loader;
#[cfg(feature = "testing")]
pub mod testing;
mod verifier;

pub use loader::{
    run, JwksError, JwksLoader, JwksSource, JwksStats, OAuthSettings, Reloader, FETCH_TIMEOUT,
    FILE_CHECK_INTERVAL, MAX_JWKS_BYTES,
};
pub use verifier::{Verifier, UNKNOWN_KID_REFRESH_INTERVAL_MS, UNKNOWN_KID_REFRESH_WAIT};
