//! Expiry of metadata that would otherwise grow with history: idempotent-producer memory
//! (Kafka's `producer.id.expiration.ms`).
//!
//! A producer's sequence memory on a partition goes when its last append there
//! ([`ProducerPartitionState::last_append_ms`](crate::state::ProducerPartitionState), the commit
//! time) is at least the expiration old; a producer id goes from the record of ids and epochs when
//! no partition remembers it any more and it was not (re)initialised within the expiration. The
//! rule is [`crate::state::producer_expired`], shared by every implementation.
//!
//! What a returning producer sees is what Kafka answers: a batch with a non-zero sequence from a
//! producer a partition no longer knows is refused with UNKNOWN_PRODUCER_ID (clients bump their
//! epoch and start over at sequence 0), a batch at sequence 0 is accepted; InitProducerId naming
//! a forgotten id hands out a fresh one.
//!
//! Memory from before times were recorded (old snapshots, journals, rows) is not expired but
//! stamped with the time of the first expiry call that sees it, so it expires one expiration
//! later. Calls are bounded (`max` changes each) and a producer that appends while its memory
//! is being expired keeps it: the embedded coordinator decides with one scan under its read lock
//! and rechecks only the decided items on its writer, behind commits
//! ([`crate::state::State::recheck_expire_producers`]); in PostgreSQL each deletion repeats its
//! condition on the row it deletes.

use async_trait::async_trait;

use crate::model::ProducerExpiryStep;
use crate::Result;

/// Expiring metadata by age.
#[async_trait]
pub trait MetadataExpiry: Send + Sync {
    /// Removes producer memory expired at `now_ms` under `expiration_ms` (see the module docs):
    /// at most `max` changes (removals and stampings); [`ProducerExpiryStep::more`] tells the
    /// caller to call again.
    async fn expire_producers(
        &self,
        now_ms: i64,
        expiration_ms: i64,
        max: usize,
    ) -> Result<ProducerExpiryStep>;
}
