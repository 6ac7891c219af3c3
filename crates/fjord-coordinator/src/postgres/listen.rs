//! Wake-ups across brokers: commits made by any broker on the database wake long-polling fetches
//! on every broker, through PostgreSQL `LISTEN`/`NOTIFY`.
//!
//! A commit transaction that appended at least one batch runs `pg_notify` on [`CHANNEL`] with a
//! short payload (the object key, cut to [`MAX_PAYLOAD_BYTES`]); PostgreSQL delivers it to every
//! listening session of the database only if, and once, the transaction commits. A commit that
//! appended nothing (only duplicates or rejected batches, or the re-commit of an object already
//! committed) does not notify: there is nothing new to fetch.
//!
//! [`PostgresCoordinator::spawn_commit_listener`] owns one task and, while connected, one
//! dedicated connection (not from the pool: `LISTEN` is per session), named
//! [`LISTENER_APPLICATION_NAME`] in `pg_stat_activity`. The task bumps a `watch` counter per
//! notification; it reads nothing else from the notification, and never queries the database
//! for commits.
//!
//! Invariants:
//! - At-least-once wake-ups: every commit that appends and commits after `spawn_commit_listener`
//!   returned is followed by at least one bump of the counter, as long as the task runs. Bumps may
//!   be spurious: after every (re)connection the counter is bumped once, since notifications sent
//!   while no session listened are lost, and commits made through this same process notify too
//!   (its own writer bumps the counter as well, so those commits wake fetches twice). An extra
//!   wake-up only costs a fetch a re-read of the index.
//! - A lost connection is reported (`warn`) and replaced: the task reconnects and re-listens after
//!   a delay that starts at [`MIN_BACKOFF`] and doubles up to [`MAX_BACKOFF`] while attempts fail
//!   or sessions end quickly (a session that lasted at least [`MAX_BACKOFF`] resets it). It never
//!   tight-polls: while connected it only waits for messages from the server.
//! - Connecting and listening together time out after the coordinator's connect timeout. The
//!   session uses TCP keepalives (probing after 30 s idle unless the URL says otherwise), so a
//!   silently vanished server is noticed rather than waited on forever.
//! - [`CommitListener`] ends the task when dropped or [stopped](CommitListener::stop); ending it
//!   closes the connection. The task holds no other state.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, Config, Connection, Socket};

use super::tls::Tls;

use super::db::describe;
use super::PostgresCoordinator;

/// The notification channel commits are announced on.
pub(super) const CHANNEL: &str = "fjord_commits";

/// Longest notification payload sent (bytes); PostgreSQL refuses 8000 or more.
pub(super) const MAX_PAYLOAD_BYTES: usize = 256;

/// `application_name` of the listener's session, to tell it apart in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "fjord-commit-listener";

/// First delay before reconnecting.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Longest delay between reconnection attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Idle time before TCP keepalive probes start, unless the URL sets `keepalives_idle`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// The libpq default of `keepalives_idle`, which tokio-postgres also uses.
pub(super) const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// What a commit notifies with: `object_key`, cut to at most [`MAX_PAYLOAD_BYTES`] at a character
/// boundary. Listeners do not depend on it; it only helps someone watching with `LISTEN`.
pub(super) fn notify_payload(object_key: &str) -> &str {
    if object_key.len() <= MAX_PAYLOAD_BYTES {
        return object_key;
    }
    let mut end = MAX_PAYLOAD_BYTES;
    while !object_key.is_char_boundary(end) {
        end -= 1;
    }
    &object_key[..end]
}

/// The listener's connection settings, derived from the pool's.
pub(super) fn listener_config(pool_config: &Config) -> Config {
    let mut config = pool_config.clone();
    config.application_name(LISTENER_APPLICATION_NAME);
    if config.get_keepalives_idle() == DEFAULT_KEEPALIVE_IDLE {
        config.keepalives_idle(KEEPALIVE_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(10));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    config
}

/// A running commit listener, from [`PostgresCoordinator::spawn_commit_listener`]: one task that
/// bumps a counter per commit notification (at least once per appending commit, spurious bumps
/// allowed), reconnecting with backoff when its session is lost. Dropping it stops the task.
#[must_use = "dropping a CommitListener stops it"]
pub struct CommitListener {
    task: JoinHandle<()>,
}

impl CommitListener {
    /// Stops the task and waits until it has ended (its connection is then closed).
    pub async fn stop(mut self) {
        self.task.abort();
        // Cancellation is the expected outcome; the task never fails otherwise.
        let _ = (&mut self.task).await;
    }

    /// Whether the task has ended (only after [`stop`](Self::stop) or a panic).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for CommitListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PostgresCoordinator {
    /// Starts listening for commits made by any broker (any coordinator instance, this one
    /// included) on this database: `on_commit` is bumped (wrapping `+ 1`) at least once after each
    /// commit that appended data, and once after each (re)connection of the listener. Returns at
    /// once; the listener connects in the background, retrying with backoff (failures are logged,
    /// never returned). Must be called within a Tokio runtime.
    pub fn spawn_commit_listener(&self, on_commit: Arc<watch::Sender<u64>>) -> CommitListener {
        let config = Arc::clone(&self.listener_config);
        CommitListener {
            task: tokio::spawn(run(config, self.tls.clone(), on_commit)),
        }
    }
}

fn bump(on_commit: &watch::Sender<u64>) {
    on_commit.send_modify(|n| *n = n.wrapping_add(1));
}

/// The listener task: connect, listen, wait for notifications; on loss, back off and again.
async fn run(config: Arc<Config>, tls: Tls, on_commit: Arc<watch::Sender<u64>>) {
    let mut backoff = MIN_BACKOFF;
    let mut reconnecting = false;
    loop {
        match open(&config, &tls, &on_commit).await {
            Ok((client, mut connection)) => {
                let since = Instant::now();
                if reconnecting {
                    tracing::info!("commit listener reconnected");
                }
                // Commits notified while no session listened are lost: assume there were some.
                bump(&on_commit);
                let lost = listen(&mut connection, &on_commit).await;
                drop(client);
                if since.elapsed() >= MAX_BACKOFF {
                    backoff = MIN_BACKOFF;
                }
                tracing::warn!(
                    "commit listener lost its PostgreSQL connection ({lost}); reconnecting in \
                     {backoff:?}"
                );
            }
            Err(e) => tracing::warn!(
                "commit listener could not connect to PostgreSQL ({e}); retrying in {backoff:?}"
            ),
        }
        reconnecting = true;
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
    }
}

type ListenConnection = Connection<Socket, <Tls as MakeTlsConnect<Socket>>::Stream>;

/// Connects and runs `LISTEN`, within the connect timeout. Notifications arriving meanwhile bump
/// the counter.
async fn open(
    config: &Config,
    tls: &Tls,
    on_commit: &watch::Sender<u64>,
) -> Result<(Client, ListenConnection), String> {
    let timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(super::PostgresOptions::default().connect_timeout);
    let opened = tokio::time::timeout(timeout, async {
        let (client, mut connection) = config
            .connect(tls.clone())
            .await
            .map_err(|e| describe(&e))?;
        {
            let listen_sql = format!("LISTEN {CHANNEL}");
            let listen = client.batch_execute(&listen_sql);
            tokio::pin!(listen);
            // The client's requests only progress while the connection is polled.
            let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
            loop {
                tokio::select! {
                    listened = &mut listen => {
                        listened.map_err(|e| format!("LISTEN: {}", describe(&e)))?;
                        break;
                    }
                    message = messages.next() => {
                        if let Some(lost) = handle(message, on_commit) {
                            return Err(lost);
                        }
                    }
                }
            }
        }
        Ok((client, connection))
    })
    .await;
    opened.unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
}

/// Waits for notifications until the connection ends; returns why it ended.
async fn listen(connection: &mut ListenConnection, on_commit: &watch::Sender<u64>) -> String {
    let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
    loop {
        if let Some(lost) = handle(messages.next().await, on_commit) {
            return lost;
        }
    }
}

/// Acts on one message of the connection; `Some(why)` when the connection is gone (a terminal
/// value: the connection must not be polled again).
fn handle(
    message: Option<Result<AsyncMessage, tokio_postgres::Error>>,
    on_commit: &watch::Sender<u64>,
) -> Option<String> {
    match message {
        Some(Ok(AsyncMessage::Notification(_))) => {
            bump(on_commit);
            None
        }
        Some(Ok(AsyncMessage::Notice(notice))) => {
            tracing::debug!(
                "commit listener: {}: {}",
                notice.severity(),
                notice.message()
            );
            None
        }
        Some(Ok(_)) => None,
        Some(Err(e)) => Some(describe(&e)),
        None => Some("the server closed it".to_string()),
    }
}
