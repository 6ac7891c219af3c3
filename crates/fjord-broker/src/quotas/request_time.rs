//! Request quotas (Kafka's `request_percentage`, KIP-124): the share of a thread's time a
//! client's requests may take, metered as Kafka meters its request handler threads.
//!
//! - The time a request costs is the time its handler actually runs: [`PollTimed`] adds up the
//!   time spent inside each `poll` of the handler's future (and of the encoding). Time spent
//!   waiting (for object storage, the write buffer's flush, a long-poll fetch) is not counted,
//!   as Kafka does not count time a request spends in purgatory.
//! - A quota of `n` is `n`% of one thread: `n / 100` seconds of handler time per second. The
//!   time is recorded on the client's `request_percentage` meter in percent-seconds, and the
//!   throttle time is the byte quotas' formula ([`super::throttle_ms`]).
//! - The response's `throttle_time_ms` is the larger of this and any byte-rate throttle, set
//!   through [`ThrottleTime`] (responses of versions without the field ignore it), and the
//!   response is held back that long (see [`super`]).
//!
//! [`RequestMeter::for_client`] costs one read of the loaded quotas when none applies; nothing
//! is timed then.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fjord_coordinator::quotas::QuotaKey;
use kafka_protocol::messages::*;

use crate::Broker;

pin_project_lite::pin_project! {
    /// A future that also yields how long its `poll`s took in total.
    pub struct PollTimed<F> {
        #[pin]
        inner: F,
        spent: Duration,
    }
}

impl<F> PollTimed<F> {
    /// Times `inner`.
    pub fn new(inner: F) -> Self {
        PollTimed {
            inner,
            spent: Duration::ZERO,
        }
    }
}

impl<F: Future> Future for PollTimed<F> {
    type Output = (F::Output, Duration);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let started = Instant::now();
        let result = this.inner.poll(cx);
        *this.spent += started.elapsed();
        match result {
            Poll::Ready(output) => Poll::Ready((output, *this.spent)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Meters the handler time of one client's requests against its `request_percentage` quota.
#[derive(Clone)]
pub struct RequestMeter {
    broker: Arc<Broker>,
    user: String,
    client_id: String,
}

impl RequestMeter {
    /// A meter for requests of `(user, client_id)`, if a request quota applies to them.
    pub fn for_client(broker: &Arc<Broker>, user: &str, client_id: &str) -> Option<RequestMeter> {
        broker
            .quotas
            .quota_for(QuotaKey::RequestPercentage, user, client_id)
            .map(|_| RequestMeter {
                broker: broker.clone(),
                user: user.to_string(),
                client_id: client_id.to_string(),
            })
    }

    /// Records `spent` handler time; the throttle time in ms.
    pub fn record(&self, spent: Duration) -> i32 {
        let ms = self.broker.quotas.record(
            QuotaKey::RequestPercentage,
            &self.user,
            &self.client_id,
            spent.as_secs_f64() * 100.0,
        );
        i32::try_from(ms).unwrap_or(i32::MAX)
    }
}

/// Records `spent` on `meter` (if any); the throttle time in ms.
pub fn throttle(meter: Option<&RequestMeter>, spent: Duration) -> i32 {
    meter.map_or(0, |m| m.record(spent))
}

/// A response whose `throttle_time_ms` can be raised.
pub trait ThrottleTime {
    /// Sets `throttle_time_ms` to at least `ms` (no-op for responses without the field).
    fn throttle_at_least(&mut self, ms: i32);
}

macro_rules! throttle_time {
    ($($response:ty),* $(,)?) => {
        $(impl ThrottleTime for $response {
            fn throttle_at_least(&mut self, ms: i32) {
                self.throttle_time_ms = self.throttle_time_ms.max(ms);
            }
        })*
    };
}

throttle_time!(
    ApiVersionsResponse,
    MetadataResponse,
    ProduceResponse,
    FetchResponse,
    ListOffsetsResponse,
    CreateTopicsResponse,
    DeleteTopicsResponse,
    DeleteRecordsResponse,
    CreatePartitionsResponse,
    DescribeConfigsResponse,
    AlterConfigsResponse,
    IncrementalAlterConfigsResponse,
    DescribeClusterResponse,
    InitProducerIdResponse,
    FindCoordinatorResponse,
    JoinGroupResponse,
    SyncGroupResponse,
    HeartbeatResponse,
    LeaveGroupResponse,
    ListGroupsResponse,
    DescribeGroupsResponse,
    DeleteGroupsResponse,
    OffsetCommitResponse,
    OffsetFetchResponse,
    OffsetDeleteResponse,
    ConsumerGroupHeartbeatResponse,
    ConsumerGroupDescribeResponse,
    DescribeUserScramCredentialsResponse,
    AlterUserScramCredentialsResponse,
    DescribeAclsResponse,
    CreateAclsResponse,
    DeleteAclsResponse,
    DescribeClientQuotasResponse,
    AlterClientQuotasResponse,
);

// The SASL exchange is not throttled (Kafka neither): these answer out-of-place SASL requests.
impl ThrottleTime for SaslHandshakeResponse {
    fn throttle_at_least(&mut self, _ms: i32) {}
}

impl ThrottleTime for SaslAuthenticateResponse {
    fn throttle_at_least(&mut self, _ms: i32) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_time_inside_polls_counts() {
        // Waiting (pending between polls) costs nothing.
        let ((), spent) = PollTimed::new(tokio::time::sleep(Duration::from_millis(50))).await;
        assert!(spent < Duration::from_millis(20), "{spent:?}");
        // Work inside a poll counts, over several polls.
        let work = async {
            std::thread::sleep(Duration::from_millis(15));
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(15));
        };
        let ((), spent) = PollTimed::new(work).await;
        assert!(spent >= Duration::from_millis(30), "{spent:?}");
    }

    #[test]
    fn throttle_is_raised_never_lowered() {
        let mut r = MetadataResponse::default().with_throttle_time_ms(30);
        r.throttle_at_least(10);
        assert_eq!(r.throttle_time_ms, 30);
        r.throttle_at_least(50);
        assert_eq!(r.throttle_time_ms, 50);
        assert_eq!(throttle(None, Duration::from_secs(5)), 0);
    }
}
