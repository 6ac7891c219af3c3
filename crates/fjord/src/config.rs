//! `fjord serve` settings: defaults < TOML file (`--config`) < `FJORD_*` environment < flags.
//!
//! Settings are plain data; the components they describe (store, coordinator, writer) are built
//! in `serve.rs`. Unknown keys in the file are rejected, so a typo never goes unnoticed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

/// Every setting of `fjord serve`, as read from a TOML file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address the Kafka listener binds.
    pub listen: String,
    /// `host:port` that clients are told to connect to (default: the listen address).
    pub advertised_address: Option<String>,
    /// Listeners as in Kafka's `listeners`: `NAME=PROTOCOL://IP:PORT` or `PROTOCOL://IP:PORT`
    /// (named after the protocol); when set, they replace `listen`.
    pub listeners: Vec<String>,
    /// Addresses clients of a listener are told, as in Kafka's `advertised.listeners`:
    /// `NAME=HOST:PORT` (default: the listener's own address).
    pub advertised_listeners: Vec<String>,
    /// The listener brokers use to reach each other (default: the first).
    pub inter_broker_listener_name: Option<String>,
    /// TLS certificate chain (PEM) of `SSL` listeners.
    pub ssl_cert_file: Option<PathBuf>,
    /// TLS private key (PEM) of `SSL` listeners.
    pub ssl_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to.
    pub ssl_client_ca_file: Option<PathBuf>,
    /// Kafka's `ssl.client.auth`: `none`, `requested` or `required`.
    pub ssl_client_auth: String,
    /// Kafka's `ssl.principal.mapping.rules`, naming principals from client certificates.
    pub ssl_principal_mapping_rules: String,
    /// How often (ms) the TLS files are checked for changes and reloaded.
    pub ssl_reload_interval_ms: u64,
    /// Kafka's `sasl.enabled.mechanisms` on SASL listeners: SCRAM-SHA-512, SCRAM-SHA-256, PLAIN.
    pub sasl_enabled_mechanisms: Vec<String>,
    /// Kafka's `connections.max.reauth.ms`: SASL sessions end after this long unless the client
    /// re-authenticates (0: never).
    pub connections_max_reauth_ms: i64,
    /// Kafka's `connection.failed.authentication.delay.ms`.
    pub connection_failed_authentication_delay_ms: u64,
    /// Failed SASL authentications allowed per client address per minute (0: no limit).
    pub sasl_failed_authentications_per_minute: u32,
    /// A SCRAM user created at startup if it has no credentials yet, with the password in the
    /// environment variable `FJORD_SASL_BOOTSTRAP_PASSWORD`: the first administrator.
    pub sasl_bootstrap_user: Option<String>,
    /// `acl` enforces Kafka ACLs (Kafka's `authorizer.class.name`); `none` allows everything.
    pub authorizer: String,
    /// Kafka's `super.users`: principals allowed everything, `;`-separated (`User:admin`).
    pub super_users: String,
    /// Kafka's `allow.everyone.if.no.acl.found`.
    pub allow_everyone_if_no_acl_found: bool,
    /// How often (ms) each broker checks the coordinator for ACL changes.
    pub acl_refresh_interval_ms: u64,
    /// Kafka's `sasl.oauthbearer.jwks.endpoint.url`: where OAUTHBEARER's verification keys are
    /// (`file:///path/jwks.json`, `https://idp/.well-known/jwks.json`).
    pub sasl_oauthbearer_jwks_endpoint_url: Option<String>,
    /// Kafka's `sasl.oauthbearer.jwks.endpoint.refresh.ms`: how often an http(s) JWKS is fetched
    /// again (a file is checked for changes every few seconds).
    pub sasl_oauthbearer_jwks_endpoint_refresh_ms: u64,
    /// Kafka's `sasl.oauthbearer.expected.issuer`: tokens' `iss` must equal it, when set.
    pub sasl_oauthbearer_expected_issuer: Option<String>,
    /// Kafka's `sasl.oauthbearer.expected.audience`: tokens' `aud` must contain one of these,
    /// when set.
    pub sasl_oauthbearer_expected_audience: Vec<String>,
    /// Kafka's `sasl.oauthbearer.sub.claim.name`: the claim naming the principal.
    pub sasl_oauthbearer_sub_claim_name: String,
    /// Kafka's `sasl.oauthbearer.clock.skew.seconds`: allowed on `exp`, `nbf` and `iat`.
    pub sasl_oauthbearer_clock_skew_seconds: u64,
    /// Directory for local state (the embedded coordinator, the local object store).
    pub data_dir: PathBuf,
    /// Object store URL: `file://DIR`, `memory://` or `s3://bucket/prefix`
    /// (default: `file://<data_dir>/objects`).
    pub object_store: Option<String>,
    /// Options of an `s3://` object store (object_store's S3 and HTTP client keys: `endpoint`,
    /// `region`, `virtual_hosted_style_request`, `timeout`, ...); override `AWS_*` variables.
    pub object_store_options: BTreeMap<String, String>,
    /// Coordinator: `embedded` (a journal under `<data_dir>/coordinator`) or `postgres://...`.
    pub coordinator: String,
    /// This broker's node id; unset: 0 with the embedded coordinator, the lowest free id with
    /// PostgreSQL (brokers of a Deployment need no fixed ids).
    pub node_id: Option<i32>,
    /// Cluster id reported to clients.
    pub cluster_id: String,
    /// Zone / rack of this broker.
    pub zone: Option<String>,
    /// Create unknown topics on Metadata and Produce.
    pub auto_create_topics: bool,
    /// Partitions of automatically created topics.
    pub default_partitions: i32,
    /// Seal the write buffer at this many bytes.
    pub flush_bytes: usize,
    /// Seal the write buffer this many ms after its first batch.
    pub flush_interval_ms: u64,
    /// Flushes uploading or committing at once.
    pub max_inflight_flushes: usize,
    /// Seal the write buffer at once when no flush is in flight (instead of waiting for the
    /// flush interval).
    pub flush_when_idle: bool,
    /// Produce requests wait once this many bytes are buffered.
    pub max_buffer_bytes: usize,
    /// Bytes of object data cached for reads.
    pub read_cache_bytes: usize,
    /// Largest record batch when a topic sets no `max.message.bytes`.
    pub message_max_bytes: i32,
    /// Largest request frame.
    pub max_request_bytes: usize,
    /// Most record bytes in one fetch response, whatever the client asks for (Kafka's
    /// `fetch.max.bytes`).
    pub fetch_max_bytes: i32,
    /// Most record bytes all fetch responses hold at once; a fetch waits for its share.
    pub fetch_memory_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections the kernel queues for the listener before it accepts them (Kafka's
    /// `socket.listen.backlog.size`; the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Seconds that shutdown waits for in-flight requests.
    pub shutdown_timeout_secs: u64,
    /// Seconds between object garbage-collection passes.
    pub gc_interval_secs: u64,
    /// `retention.ms` of topics that do not set it (Kafka's `log.retention.ms`); -1: forever.
    pub log_retention_ms: i64,
    /// `retention.bytes` of topics that do not set it (Kafka's `log.retention.bytes`); -1: no
    /// limit.
    pub log_retention_bytes: i64,
    /// Milliseconds between retention passes (Kafka's `log.retention.check.interval.ms`).
    pub log_retention_check_interval_ms: u64,
    /// Idempotent-producer memory unused for this long (ms) expires (Kafka's
    /// `producer.id.expiration.ms`).
    pub producer_id_expiration_ms: i64,
    /// Milliseconds between producer expiry passes (Kafka's
    /// `producer.id.expiration.check.interval.ms`).
    pub producer_id_expiration_check_interval_ms: u64,
    /// Committed offsets of empty consumer groups expire after this many minutes (Kafka's
    /// `offsets.retention.minutes`).
    pub offsets_retention_minutes: u64,
    /// Overrides `offsets_retention_minutes` in milliseconds (for tests; Kafka has no such key).
    pub offsets_retention_ms: Option<u64>,
    /// Milliseconds between offset expiry passes (Kafka's
    /// `offsets.retention.check.interval.ms`).
    pub offsets_retention_check_interval_ms: u64,
    /// `segment.ms` of topics that do not set it (Kafka's `log.roll.ms`): compacted data written
    /// longer ago than this is closed and may be cleaned.
    pub log_roll_ms: i64,
    /// Whether the log cleaner compacts `cleanup.policy=compact` topics (Kafka's
    /// `log.cleaner.enable`).
    pub log_cleaner_enable: bool,
    /// Milliseconds between log cleaner passes (Kafka's `log.cleaner.backoff.ms`).
    pub log_cleaner_backoff_ms: u64,
    /// Most memory one cleaning's key map holds (Kafka's `log.cleaner.dedupe.buffer.size`).
    pub log_cleaner_dedupe_buffer_size: usize,
    /// How long (ms) a new consumer group waits for more members before its first rebalance
    /// completes (Kafka's `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay_ms: u64,
    /// Session timeout (ms) of consumer-protocol (KIP-848) group members
    /// (Kafka's `group.consumer.session.timeout.ms`).
    pub group_consumer_session_timeout_ms: u64,
    /// Heartbeat interval (ms) told to consumer-protocol group members
    /// (Kafka's `group.consumer.heartbeat.interval.ms`).
    pub group_consumer_heartbeat_interval_ms: u64,
    /// Seconds a never-committed object is kept before the orphan sweep may delete it.
    pub gc_grace_secs: u64,
    /// Milliseconds an object is kept after its last index row went (Kafka's
    /// `log.segment.delete.delay.ms`; a topic's `file.delete.delay.ms` can lengthen it).
    pub log_segment_delete_delay_ms: u64,
    /// Seconds between orphan sweeps (bucket listings for objects never committed).
    pub gc_orphan_sweep_interval_secs: u64,
    /// Milliseconds between object compaction passes; 0 turns object compaction off.
    pub compaction_interval_ms: u64,
    /// Object compaction writes per-partition objects of about this many bytes.
    pub compaction_target_bytes: u64,
    /// Index rows of compacted objects hold at most this many bytes (one GET each on a cold
    /// read).
    pub compaction_max_row_bytes: u64,
    /// Only rows whose objects were written at least this long ago (ms) are compacted.
    pub compaction_min_age_ms: u64,
    /// Most bytes one compaction pass merges.
    pub compaction_bytes_per_pass: u64,
    /// Test setting: the compactor waits this long (ms) between uploading a merged object and
    /// swapping it in, so a test can kill the broker mid-merge. 0 (the default) in production.
    pub compaction_test_pause_before_swap_ms: u64,
    /// Test and benchmark setting: this broker's wall clock runs this many ms ahead of the
    /// system's (e.g. to show the hourly orphan sweep at work). 0 (the default) in production.
    pub simulated_clock_offset_ms: i64,
    /// Connections each broker keeps to a PostgreSQL coordinator (plus one for commit
    /// notifications).
    pub postgres_pool_size: usize,
    /// Start a second, identical PUT when an upload takes longer than this (ms); 0 = never.
    pub upload_hedge_ms: u64,
    /// Start a second, identical GET when a read of object storage takes longer than this (ms);
    /// 0 = never.
    pub read_hedge_ms: u64,
    /// PEM file of CA certificates trusted for TLS to PostgreSQL (`sslmode=require` in the URL),
    /// besides the system's.
    pub postgres_ca_file: Option<PathBuf>,
    /// Address of the Prometheus endpoint (`GET /metrics`); none when unset.
    pub metrics_listen: Option<String>,
    /// Simulated object-store latency for benchmarks and tests: `s3` (S3 Standard-like) or
    /// `put=MEDIAN/P99,get=MEDIAN/P99,other=MEDIAN/P99` in ms. Never set it in production.
    pub simulated_store_latency: Option<String>,
    /// Lease (ms) of this broker's registration; it is renewed every fifth of it. A broker that
    /// stops renewing leaves Metadata within this time plus one renewal interval.
    pub broker_lease_ms: u64,
    /// Interval (ms) at which each broker of a cluster probes the others directly; a broker
    /// found dead leaves this one's Metadata at once instead of after its lease. 0: no probes.
    pub peer_probe_interval_ms: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:9092".into(),
            advertised_address: None,
            listeners: Vec::new(),
            advertised_listeners: Vec::new(),
            inter_broker_listener_name: None,
            ssl_cert_file: None,
            ssl_key_file: None,
            ssl_client_ca_file: None,
            ssl_client_auth: "none".into(),
            ssl_principal_mapping_rules: "DEFAULT".into(),
            ssl_reload_interval_ms: 10_000,
            sasl_enabled_mechanisms: vec![
                "SCRAM-SHA-512".into(),
                "SCRAM-SHA-256".into(),
                "PLAIN".into(),
            ],
            connections_max_reauth_ms: 0,
            connection_failed_authentication_delay_ms: 100,
            sasl_failed_authentications_per_minute: 30,
            sasl_bootstrap_user: None,
            authorizer: "none".into(),
            super_users: String::new(),
            allow_everyone_if_no_acl_found: false,
            acl_refresh_interval_ms: 1000,
            sasl_oauthbearer_jwks_endpoint_url: None,
            sasl_oauthbearer_jwks_endpoint_refresh_ms: 300_000,
            sasl_oauthbearer_expected_issuer: None,
            sasl_oauthbearer_expected_audience: Vec::new(),
            sasl_oauthbearer_sub_claim_name: "sub".into(),
            sasl_oauthbearer_clock_skew_seconds: 30,
            data_dir: PathBuf::from("data"),
            object_store: None,
            object_store_options: BTreeMap::new(),
            coordinator: "embedded".into(),
            node_id: None,
            cluster_id: "fjord".into(),
            zone: None,
            auto_create_topics: true,
            default_partitions: 1,
            flush_bytes: 4 << 20,
            flush_interval_ms: 5,
            max_inflight_flushes: 4,
            flush_when_idle: true,
            max_buffer_bytes: 32 << 20,
            read_cache_bytes: 256 << 20,
            message_max_bytes: 1_048_588,
            max_request_bytes: 100 << 20,
            fetch_max_bytes: fjord_broker::DEFAULT_FETCH_MAX_BYTES,
            fetch_memory_bytes: 512 << 20,
            max_connections: 100_000,
            listen_backlog: 1024,
            shutdown_timeout_secs: 30,
            gc_interval_secs: 60,
            log_retention_ms: fjord_broker::retention::DEFAULT_RETENTION_MS,
            log_retention_bytes: -1,
            log_retention_check_interval_ms: 30_000,
            producer_id_expiration_ms: fjord_broker::expiry::DEFAULT_PRODUCER_ID_EXPIRATION_MS,
            producer_id_expiration_check_interval_ms: 600_000,
            offsets_retention_minutes: fjord_broker::expiry::DEFAULT_OFFSETS_RETENTION_MINUTES,
            offsets_retention_ms: None,
            offsets_retention_check_interval_ms: 600_000,
            log_roll_ms: fjord_broker::cleaner::DEFAULT_SEGMENT_MS,
            log_cleaner_enable: true,
            log_cleaner_backoff_ms: 15_000,
            log_cleaner_dedupe_buffer_size: 128 << 20,
            group_initial_rebalance_delay_ms: 3000,
            group_consumer_session_timeout_ms: 45_000,
            group_consumer_heartbeat_interval_ms: 5_000,
            gc_grace_secs: 600,
            log_segment_delete_delay_ms: 60_000,
            gc_orphan_sweep_interval_secs: 3_600,
            compaction_interval_ms: 30_000,
            compaction_target_bytes: 64 << 20,
            compaction_max_row_bytes: 8 << 20,
            compaction_min_age_ms: 300_000,
            compaction_bytes_per_pass: 1 << 30,
            compaction_test_pause_before_swap_ms: 0,
            simulated_clock_offset_ms: 0,
            broker_lease_ms: 6_000,
            peer_probe_interval_ms: 100,
            postgres_pool_size: 8,
            metrics_listen: None,
            simulated_store_latency: None,
            upload_hedge_ms: 200,
            read_hedge_ms: 100,
            postgres_ca_file: None,
        }
    }
}

/// Flags of `fjord serve`; each may also come from its `FJORD_*` environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file with settings (keys as the long flags, with '_' for '-').
    #[arg(long, env = "FJORD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on for Kafka clients [default: 127.0.0.1:9092].
    #[arg(long, env = "FJORD_LISTEN")]
    pub listen: Option<String>,
    /// host:port advertised to clients [default: the listen address].
    #[arg(long, env = "FJORD_ADVERTISED_ADDRESS")]
    pub advertised_address: Option<String>,
    /// A listener, NAME=PROTOCOL://IP:PORT or PROTOCOL://IP:PORT (repeatable; PROTOCOL is
    /// PLAINTEXT or SSL), e.g. INTERNAL=PLAINTEXT://0.0.0.0:9092; replaces --listen.
    #[arg(long = "listener", env = "FJORD_LISTENERS", value_delimiter = ',')]
    pub listeners: Vec<String>,
    /// Address clients of a listener are told, NAME=HOST:PORT (repeatable) [default: the
    /// listener's address].
    #[arg(
        long = "advertised-listener",
        env = "FJORD_ADVERTISED_LISTENERS",
        value_delimiter = ','
    )]
    pub advertised_listeners: Vec<String>,
    /// The listener brokers use to reach each other [default: the first].
    #[arg(long, env = "FJORD_INTER_BROKER_LISTENER_NAME")]
    pub inter_broker_listener_name: Option<String>,
    /// TLS certificate chain (PEM) of SSL listeners; reloaded when it changes.
    #[arg(long, env = "FJORD_SSL_CERT_FILE")]
    pub ssl_cert_file: Option<PathBuf>,
    /// TLS private key (PEM) of SSL listeners; reloaded when it changes.
    #[arg(long, env = "FJORD_SSL_KEY_FILE")]
    pub ssl_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to.
    #[arg(long, env = "FJORD_SSL_CLIENT_CA_FILE")]
    pub ssl_client_ca_file: Option<PathBuf>,
    /// Client certificates (Kafka's ssl.client.auth): none, requested or required [default: none].
    #[arg(long, env = "FJORD_SSL_CLIENT_AUTH")]
    pub ssl_client_auth: Option<String>,
    /// Principals from client certificates (Kafka's ssl.principal.mapping.rules), e.g.
    /// 'RULE:^CN=(.*?),.*$/$1/,DEFAULT' [default: DEFAULT, the certificate's subject].
    #[arg(long, env = "FJORD_SSL_PRINCIPAL_MAPPING_RULES")]
    pub ssl_principal_mapping_rules: Option<String>,
    /// Milliseconds between checks of the TLS files for changes [default: 10000].
    #[arg(long, env = "FJORD_SSL_RELOAD_INTERVAL_MS")]
    pub ssl_reload_interval_ms: Option<u64>,
    /// SASL mechanisms offered on SASL listeners (Kafka's sasl.enabled.mechanisms)
    /// [default: SCRAM-SHA-512,SCRAM-SHA-256,PLAIN].
    #[arg(long, env = "FJORD_SASL_ENABLED_MECHANISMS", value_delimiter = ',')]
    pub sasl_enabled_mechanisms: Option<Vec<String>>,
    /// SASL sessions end after this many ms unless the client re-authenticates (Kafka's
    /// connections.max.reauth.ms; 0: never) [default: 0].
    #[arg(long, env = "FJORD_CONNECTIONS_MAX_REAUTH_MS")]
    pub connections_max_reauth_ms: Option<i64>,
    /// Delay (ms) before a failed authentication is answered and closed (Kafka's
    /// connection.failed.authentication.delay.ms) [default: 100].
    #[arg(long, env = "FJORD_CONNECTION_FAILED_AUTHENTICATION_DELAY_MS")]
    pub connection_failed_authentication_delay_ms: Option<u64>,
    /// Failed SASL authentications allowed per client address per minute; beyond it attempts
    /// are refused unchecked (0: no limit) [default: 30].
    #[arg(long, env = "FJORD_SASL_FAILED_AUTHENTICATIONS_PER_MINUTE")]
    pub sasl_failed_authentications_per_minute: Option<u32>,
    /// A SCRAM user (SCRAM-SHA-256 and -512) created at startup if it has no credentials yet,
    /// with the password in FJORD_SASL_BOOTSTRAP_PASSWORD (never a flag): the first admin.
    #[arg(long, env = "FJORD_SASL_BOOTSTRAP_USER")]
    pub sasl_bootstrap_user: Option<String>,
    /// `acl` enforces Kafka ACLs kept in the coordinator (Kafka's authorizer.class.name);
    /// `none` allows every request [default: none].
    #[arg(long, env = "FJORD_AUTHORIZER")]
    pub authorizer: Option<String>,
    /// Principals allowed everything, ';'-separated, e.g. 'User:admin;User:ops' (Kafka's
    /// super.users).
    #[arg(long, env = "FJORD_SUPER_USERS")]
    pub super_users: Option<String>,
    /// Allow what no ACL names (Kafka's allow.everyone.if.no.acl.found) [default: false].
    #[arg(long, env = "FJORD_ALLOW_EVERYONE_IF_NO_ACL_FOUND")]
    pub allow_everyone_if_no_acl_found: Option<bool>,
    /// How often (ms) each broker checks for ACL changes: a change made through any broker is
    /// enforced by all within about this long [default: 1000].
    #[arg(long, env = "FJORD_ACL_REFRESH_INTERVAL_MS")]
    pub acl_refresh_interval_ms: Option<u64>,
    /// Where OAUTHBEARER's verification keys (a JWKS) are: file:///path/jwks.json or
    /// https://idp/.well-known/jwks.json (Kafka's sasl.oauthbearer.jwks.endpoint.url). With the
    /// default mechanisms, setting it adds OAUTHBEARER to them.
    #[arg(long, env = "FJORD_SASL_OAUTHBEARER_JWKS_ENDPOINT_URL")]
    pub sasl_oauthbearer_jwks_endpoint_url: Option<String>,
    /// Milliseconds between fetches of an http(s) JWKS (Kafka's
    /// sasl.oauthbearer.jwks.endpoint.refresh.ms); a file is checked every 5 s [default: 300000].
    #[arg(long, env = "FJORD_SASL_OAUTHBEARER_JWKS_ENDPOINT_REFRESH_MS")]
    pub sasl_oauthbearer_jwks_endpoint_refresh_ms: Option<u64>,
    /// OAUTHBEARER tokens' iss must equal this (Kafka's sasl.oauthbearer.expected.issuer).
    #[arg(long, env = "FJORD_SASL_OAUTHBEARER_EXPECTED_ISSUER")]
    pub sasl_oauthbearer_expected_issuer: Option<String>,
    /// OAUTHBEARER tokens' aud must contain one of these (repeatable or comma-separated;
    /// Kafka's sasl.oauthbearer.expected.audience).
    #[arg(
        long,
        env = "FJORD_SASL_OAUTHBEARER_EXPECTED_AUDIENCE",
        value_delimiter = ','
    )]
    pub sasl_oauthbearer_expected_audience: Option<Vec<String>>,
    /// The OAUTHBEARER token claim naming the principal (Kafka's
    /// sasl.oauthbearer.sub.claim.name) [default: sub].
    #[arg(long, env = "FJORD_SASL_OAUTHBEARER_SUB_CLAIM_NAME")]
    pub sasl_oauthbearer_sub_claim_name: Option<String>,
    /// Clock skew allowed on OAUTHBEARER tokens' exp, nbf and iat (Kafka's
    /// sasl.oauthbearer.clock.skew.seconds) [default: 30].
    #[arg(long, env = "FJORD_SASL_OAUTHBEARER_CLOCK_SKEW_SECONDS")]
    pub sasl_oauthbearer_clock_skew_seconds: Option<u64>,
    /// Directory for local state [default: ./data].
    #[arg(long, env = "FJORD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Object store URL: file://DIR, memory:// or s3://bucket/prefix [default: file://<data-dir>/objects].
    #[arg(long, env = "FJORD_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// S3 option KEY=VALUE (repeatable), e.g. endpoint=http://minio:9000, region=eu-west-1,
    /// virtual_hosted_style_request=false, timeout=10s; overrides AWS_* variables.
    #[arg(long = "object-store-option", env = "FJORD_OBJECT_STORE_OPTIONS", value_delimiter = ',', value_parser = parse_key_value)]
    pub object_store_options: Vec<(String, String)>,
    /// Lease (ms) of this broker's registration in the coordinator [default: 6000].
    #[arg(long, env = "FJORD_BROKER_LEASE_MS")]
    pub broker_lease_ms: Option<u64>,
    /// Interval (ms) of direct probes between brokers of a cluster: a broker found dead leaves
    /// Metadata at once, not after its lease; 0 turns probing off [default: 100].
    #[arg(long, env = "FJORD_PEER_PROBE_INTERVAL_MS")]
    pub peer_probe_interval_ms: Option<u64>,
    /// CA certificates (PEM) trusted for TLS to PostgreSQL; the URL must say sslmode=require.
    #[arg(long, env = "FJORD_POSTGRES_CA_FILE")]
    pub postgres_ca_file: Option<PathBuf>,
    /// Hedge an upload with a second identical PUT after this many ms; 0 = never [default: 200].
    #[arg(long, env = "FJORD_UPLOAD_HEDGE_MS")]
    pub upload_hedge_ms: Option<u64>,
    /// Hedge a read of object storage with a second identical GET after this many ms; 0 = never
    /// [default: 100].
    #[arg(long, env = "FJORD_READ_HEDGE_MS")]
    pub read_hedge_ms: Option<u64>,
    /// Address for the Prometheus endpoint, GET /metrics (e.g. 0.0.0.0:9093) [default: none].
    #[arg(long, env = "FJORD_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Simulated object-store latency, for benchmarks: "s3" or "put=50/300,get=30/150" (ms median/p99).
    #[arg(long, env = "FJORD_SIMULATED_STORE_LATENCY")]
    pub simulated_store_latency: Option<String>,
    /// Connections to a PostgreSQL coordinator, besides one for commit notifications [default: 8].
    #[arg(long, env = "FJORD_POSTGRES_POOL_SIZE")]
    pub postgres_pool_size: Option<usize>,
    /// Produce requests wait once this many bytes are buffered [default: 32 MiB].
    #[arg(long, env = "FJORD_MAX_BUFFER_BYTES")]
    pub max_buffer_bytes: Option<usize>,
    /// Largest request frame a client may send [default: 100 MiB].
    #[arg(long, env = "FJORD_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Most record bytes in one fetch response, whatever the client asks for (Kafka's
    /// fetch.max.bytes) [default: 57671680, 55 MiB].
    #[arg(long, env = "FJORD_FETCH_MAX_BYTES")]
    pub fetch_max_bytes: Option<i32>,
    /// Most record bytes all fetch responses hold at once; fetches wait for their share
    /// [default: 512 MiB].
    #[arg(long, env = "FJORD_FETCH_MEMORY_BYTES")]
    pub fetch_memory_bytes: Option<usize>,
    /// Client connections served at once [default: 100000, lowered to leave a tenth of the
    /// open-file limit to the broker itself].
    #[arg(long, env = "FJORD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Connections queued by the kernel before the broker accepts them, e.g. when thousands of
    /// clients reconnect after a restart or wait at the connection cap [default: 1024; capped
    /// by net.core.somaxconn].
    #[arg(long, env = "FJORD_LISTEN_BACKLOG")]
    pub listen_backlog: Option<u32>,
    /// Seconds that shutdown waits for requests in flight [default: 30].
    #[arg(long, env = "FJORD_SHUTDOWN_TIMEOUT_SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Seconds between object garbage-collection passes [default: 60].
    #[arg(long, env = "FJORD_GC_INTERVAL_SECS")]
    pub gc_interval_secs: Option<u64>,
    /// `retention.ms` of topics that do not set it, like Kafka's log.retention.ms; -1: keep
    /// forever [default: 604800000, 7 days].
    #[arg(long, env = "FJORD_LOG_RETENTION_MS", allow_hyphen_values = true)]
    pub log_retention_ms: Option<i64>,
    /// `retention.bytes` of topics that do not set it (per partition), like Kafka's
    /// log.retention.bytes; -1: no size limit [default: -1].
    #[arg(long, env = "FJORD_LOG_RETENTION_BYTES", allow_hyphen_values = true)]
    pub log_retention_bytes: Option<i64>,
    /// Milliseconds between retention passes, like Kafka's log.retention.check.interval.ms:
    /// expired data becomes unreadable within about this long [default: 30000].
    #[arg(long, env = "FJORD_LOG_RETENTION_CHECK_INTERVAL_MS")]
    pub log_retention_check_interval_ms: Option<u64>,
    /// Idempotent-producer state (sequence memory per partition, and the producer id) unused for
    /// this long expires, like Kafka's producer.id.expiration.ms [default: 86400000, 1 day].
    #[arg(long, env = "FJORD_PRODUCER_ID_EXPIRATION_MS")]
    pub producer_id_expiration_ms: Option<i64>,
    /// Milliseconds between producer expiry passes, like Kafka's
    /// producer.id.expiration.check.interval.ms [default: 600000].
    #[arg(long, env = "FJORD_PRODUCER_ID_EXPIRATION_CHECK_INTERVAL_MS")]
    pub producer_id_expiration_check_interval_ms: Option<u64>,
    /// Committed offsets of a consumer group without members expire this many minutes after it
    /// became empty (standalone offsets: after their commit), like Kafka's
    /// offsets.retention.minutes [default: 10080, 7 days].
    #[arg(long, env = "FJORD_OFFSETS_RETENTION_MINUTES")]
    pub offsets_retention_minutes: Option<u64>,
    /// Offsets retention in milliseconds, overriding --offsets-retention-minutes (for tests).
    #[arg(long, env = "FJORD_OFFSETS_RETENTION_MS")]
    pub offsets_retention_ms: Option<u64>,
    /// Milliseconds between offset expiry passes, like Kafka's
    /// offsets.retention.check.interval.ms [default: 600000].
    #[arg(long, env = "FJORD_OFFSETS_RETENTION_CHECK_INTERVAL_MS")]
    pub offsets_retention_check_interval_ms: Option<u64>,
    /// `segment.ms` of topics that do not set it, like Kafka's log.roll.ms (whose default is 7
    /// days): compacted data written longer ago than this counts as closed and may be cleaned
    /// [default: 30000].
    #[arg(long, env = "FJORD_LOG_ROLL_MS")]
    pub log_roll_ms: Option<i64>,
    /// Whether the log cleaner compacts topics with cleanup.policy=compact, like Kafka's
    /// log.cleaner.enable [default: true].
    #[arg(long, env = "FJORD_LOG_CLEANER_ENABLE")]
    pub log_cleaner_enable: Option<bool>,
    /// Milliseconds between log cleaner passes, like Kafka's log.cleaner.backoff.ms
    /// [default: 15000].
    #[arg(long, env = "FJORD_LOG_CLEANER_BACKOFF_MS")]
    pub log_cleaner_backoff_ms: Option<u64>,
    /// Most memory (bytes) the key map of one cleaning holds, like Kafka's
    /// log.cleaner.dedupe.buffer.size; a dirty range with more keys is cleaned in steps
    /// [default: 134217728].
    #[arg(long, env = "FJORD_LOG_CLEANER_DEDUPE_BUFFER_SIZE")]
    pub log_cleaner_dedupe_buffer_size: Option<usize>,
    /// Seconds a never-committed object (its broker died between upload and commit) is kept
    /// before the orphan sweep deletes it [default: 600].
    #[arg(long, env = "FJORD_GC_GRACE_SECS")]
    pub gc_grace_secs: Option<u64>,
    /// Milliseconds an object is kept once no index row references it (retention, DeleteRecords
    /// or topic deletion removed its last one), so reads that looked it up finish; like Kafka's
    /// log.segment.delete.delay.ms. A topic's file.delete.delay.ms can lengthen it, never
    /// shorten it [default: 60000].
    #[arg(long, env = "FJORD_LOG_SEGMENT_DELETE_DELAY_MS")]
    pub log_segment_delete_delay_ms: Option<u64>,
    /// Seconds between orphan sweeps, the only bucket listings (one hour prefix at a time)
    /// [default: 3600].
    #[arg(long, env = "FJORD_GC_ORPHAN_SWEEP_INTERVAL_SECS")]
    pub gc_orphan_sweep_interval_secs: Option<u64>,
    /// Milliseconds between object compaction passes (merging small flush objects into
    /// per-partition objects); 0 turns it off [default: 30000].
    #[arg(long, env = "FJORD_COMPACTION_INTERVAL_MS")]
    pub compaction_interval_ms: Option<u64>,
    /// Size of the per-partition objects object compaction writes [default: 67108864, 64 MiB].
    #[arg(long, env = "FJORD_COMPACTION_TARGET_BYTES")]
    pub compaction_target_bytes: Option<u64>,
    /// Largest index row of a compacted object: a cold read fetches one row per GET
    /// [default: 8388608, 8 MiB].
    #[arg(long, env = "FJORD_COMPACTION_MAX_ROW_BYTES")]
    pub compaction_max_row_bytes: Option<u64>,
    /// Object compaction leaves data written less than this many ms ago alone (the hot tail)
    /// [default: 300000].
    #[arg(long, env = "FJORD_COMPACTION_MIN_AGE_MS")]
    pub compaction_min_age_ms: Option<u64>,
    /// Most bytes one compaction pass merges [default: 1073741824, 1 GiB].
    #[arg(long, env = "FJORD_COMPACTION_BYTES_PER_PASS")]
    pub compaction_bytes_per_pass: Option<u64>,
    /// Test setting: pause (ms) between uploading a merged object and swapping it in, so a test
    /// can kill the broker mid-merge. Never set it in production [default: 0].
    #[arg(long, env = "FJORD_COMPACTION_TEST_PAUSE_BEFORE_SWAP_MS", hide = true)]
    pub compaction_test_pause_before_swap_ms: Option<u64>,
    /// Test and benchmark setting: run this broker's wall clock this many ms ahead of the
    /// system's (0 to 7 days). Never set it in production [default: 0].
    #[arg(long, env = "FJORD_SIMULATED_CLOCK_OFFSET_MS", hide = true)]
    pub simulated_clock_offset_ms: Option<i64>,
    /// Coordinator: "embedded" or postgres://user:pass@host/db [default: embedded].
    #[arg(long, env = "FJORD_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Node id of this broker [default: 0 when embedded; with PostgreSQL the lowest free id].
    #[arg(long, env = "FJORD_NODE_ID")]
    pub node_id: Option<i32>,
    /// Cluster id reported to clients [default: fjord].
    #[arg(long, env = "FJORD_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Zone (rack) of this broker.
    #[arg(long, env = "FJORD_ZONE")]
    pub zone: Option<String>,
    /// Create unknown topics on Metadata/Produce [default: true].
    #[arg(long, env = "FJORD_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics [default: 1].
    #[arg(long, env = "FJORD_DEFAULT_PARTITIONS")]
    pub default_partitions: Option<i32>,
    /// Seal the write buffer at this many bytes [default: 4 MiB].
    #[arg(long, env = "FJORD_FLUSH_BYTES")]
    pub flush_bytes: Option<usize>,
    /// Seal the write buffer this many ms after its first batch [default: 5].
    #[arg(long, env = "FJORD_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// Flushes uploading or committing at once [default: 4].
    #[arg(long, env = "FJORD_MAX_INFLIGHT_FLUSHES")]
    pub max_inflight_flushes: Option<usize>,
    /// Seal the write buffer at once when no flush is in flight; `false` always waits for the
    /// flush interval (fewer, larger objects at low load) [default: true].
    #[arg(long, env = "FJORD_FLUSH_WHEN_IDLE")]
    pub flush_when_idle: Option<bool>,
    /// Bytes of object data cached for reads [default: 256 MiB].
    #[arg(long, env = "FJORD_READ_CACHE_BYTES")]
    pub read_cache_bytes: Option<usize>,
    /// Largest record batch unless a topic sets max.message.bytes [default: 1048588].
    #[arg(long, env = "FJORD_MESSAGE_MAX_BYTES")]
    pub message_max_bytes: Option<i32>,
    /// How long (ms) a new consumer group waits for more members before its first rebalance [default: 3000].
    #[arg(long, env = "FJORD_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Session timeout (ms) of consumer-protocol group members [default: 45000].
    #[arg(long, env = "FJORD_GROUP_CONSUMER_SESSION_TIMEOUT_MS")]
    pub group_consumer_session_timeout_ms: Option<u64>,
    /// Heartbeat interval (ms) of consumer-protocol group members [default: 5000].
    #[arg(long, env = "FJORD_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS")]
    pub group_consumer_heartbeat_interval_ms: Option<u64>,
}

impl ServeArgs {
    /// Resolves the effective settings.
    pub fn resolve(&self) -> anyhow::Result<ServeConfig> {
        let mut c = match &self.config {
            Some(path) => load_file(path)?,
            None => ServeConfig::default(),
        };
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { c.$field = v.clone(); } )* };
        }
        take!(
            listen,
            ssl_client_auth,
            ssl_principal_mapping_rules,
            ssl_reload_interval_ms,
            sasl_enabled_mechanisms,
            connections_max_reauth_ms,
            connection_failed_authentication_delay_ms,
            sasl_failed_authentications_per_minute,
            authorizer,
            super_users,
            allow_everyone_if_no_acl_found,
            acl_refresh_interval_ms,
            sasl_oauthbearer_jwks_endpoint_refresh_ms,
            sasl_oauthbearer_expected_audience,
            sasl_oauthbearer_sub_claim_name,
            sasl_oauthbearer_clock_skew_seconds,
            data_dir,
            coordinator,
            cluster_id,
            auto_create_topics,
            default_partitions,
            flush_bytes,
            flush_interval_ms,
            max_inflight_flushes,
            flush_when_idle,
            read_cache_bytes,
            message_max_bytes,
            group_initial_rebalance_delay_ms,
            group_consumer_session_timeout_ms,
            group_consumer_heartbeat_interval_ms,
            broker_lease_ms,
            peer_probe_interval_ms,
            postgres_pool_size,
            max_buffer_bytes,
            max_request_bytes,
            fetch_max_bytes,
            fetch_memory_bytes,
            max_connections,
            listen_backlog,
            shutdown_timeout_secs,
            gc_interval_secs,
            log_retention_ms,
            log_retention_bytes,
            log_retention_check_interval_ms,
            producer_id_expiration_ms,
            producer_id_expiration_check_interval_ms,
            offsets_retention_minutes,
            offsets_retention_check_interval_ms,
            log_roll_ms,
            log_cleaner_enable,
            log_cleaner_backoff_ms,
            log_cleaner_dedupe_buffer_size,
            gc_grace_secs,
            log_segment_delete_delay_ms,
            gc_orphan_sweep_interval_secs,
            upload_hedge_ms,
            read_hedge_ms,
            compaction_interval_ms,
            compaction_target_bytes,
            compaction_max_row_bytes,
            compaction_min_age_ms,
            compaction_bytes_per_pass,
            compaction_test_pause_before_swap_ms,
            simulated_clock_offset_ms
        );
        c.object_store_options
            .extend(self.object_store_options.iter().cloned());
        if self.advertised_address.is_some() {
            c.advertised_address = self.advertised_address.clone();
        }
        if !self.listeners.is_empty() {
            c.listeners = self.listeners.clone();
        }
        if !self.advertised_listeners.is_empty() {
            c.advertised_listeners = self.advertised_listeners.clone();
        }
        for (flag, value) in [
            (&self.ssl_cert_file, &mut c.ssl_cert_file),
            (&self.ssl_key_file, &mut c.ssl_key_file),
            (&self.ssl_client_ca_file, &mut c.ssl_client_ca_file),
        ] {
            if flag.is_some() {
                *value = flag.clone();
            }
        }
        if self.inter_broker_listener_name.is_some() {
            c.inter_broker_listener_name = self.inter_broker_listener_name.clone();
        }
        if self.sasl_bootstrap_user.is_some() {
            c.sasl_bootstrap_user = self.sasl_bootstrap_user.clone();
        }
        if self.sasl_oauthbearer_jwks_endpoint_url.is_some() {
            c.sasl_oauthbearer_jwks_endpoint_url = self.sasl_oauthbearer_jwks_endpoint_url.clone();
        }
        if self.sasl_oauthbearer_expected_issuer.is_some() {
            c.sasl_oauthbearer_expected_issuer = self.sasl_oauthbearer_expected_issuer.clone();
        }
        if self.object_store.is_some() {
            c.object_store = self.object_store.clone();
        }
        if self.zone.is_some() {
            c.zone = self.zone.clone();
        }
        if self.node_id.is_some() {
            c.node_id = self.node_id;
        }
        if self.metrics_listen.is_some() {
            c.metrics_listen = self.metrics_listen.clone();
        }
        if self.postgres_ca_file.is_some() {
            c.postgres_ca_file = self.postgres_ca_file.clone();
        }
        if self.simulated_store_latency.is_some() {
            c.simulated_store_latency = self.simulated_store_latency.clone();
        }
        if self.offsets_retention_ms.is_some() {
            c.offsets_retention_ms = self.offsets_retention_ms;
        }
        // The open buffer must be able to reach the flush size.
        c.max_buffer_bytes = c.max_buffer_bytes.max(c.flush_bytes);
        c.validate()?;
        Ok(c)
    }
}

fn load_file(path: &Path) -> anyhow::Result<ServeConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))
}

impl ServeConfig {
    /// The offsets retention in ms: `offsets_retention_ms` if set, else the minutes.
    pub fn offsets_retention_ms(&self) -> i64 {
        let ms = self
            .offsets_retention_ms
            .unwrap_or(self.offsets_retention_minutes.saturating_mul(60_000));
        i64::try_from(ms).unwrap_or(i64::MAX)
    }

    /// Checks values that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        crate::listeners::resolve(self)?;
        self.listen.parse::<SocketAddr>().with_context(|| {
            format!(
                "listen address '{}' is not HOST:PORT (an IP address and port)",
                self.listen
            )
        })?;
        if let Some(a) = &self.advertised_address {
            split_host_port(a)?;
        }
        if self.node_id.is_some_and(|id| id < 0) {
            bail!("node_id must be at least 0");
        }
        if self.default_partitions < 1 {
            bail!("default_partitions must be at least 1");
        }
        if self.flush_bytes == 0 || self.max_inflight_flushes == 0 {
            bail!("flush_bytes and max_inflight_flushes must be positive");
        }
        if self.group_consumer_heartbeat_interval_ms == 0
            || self.group_consumer_heartbeat_interval_ms >= self.group_consumer_session_timeout_ms
        {
            bail!("group_consumer_heartbeat_interval_ms must be positive and below group_consumer_session_timeout_ms");
        }
        if self.gc_interval_secs == 0 {
            bail!("gc_interval_secs must be positive");
        }
        if self.log_retention_ms < -1 || self.log_retention_bytes < -1 {
            bail!("log_retention_ms and log_retention_bytes must be -1 (no limit) or at least 0");
        }
        if self.log_retention_check_interval_ms == 0 {
            bail!("log_retention_check_interval_ms must be positive");
        }
        if self.producer_id_expiration_ms < 1 {
            bail!("producer_id_expiration_ms must be positive");
        }
        if self.offsets_retention_minutes == 0 || self.offsets_retention_ms == Some(0) {
            bail!("offsets_retention_minutes and offsets_retention_ms must be positive");
        }
        if self.producer_id_expiration_check_interval_ms == 0
            || self.offsets_retention_check_interval_ms == 0
        {
            bail!(
                "producer_id_expiration_check_interval_ms and \
                 offsets_retention_check_interval_ms must be positive"
            );
        }
        if self.log_roll_ms < 0 || self.log_cleaner_backoff_ms == 0 {
            bail!("log_roll_ms must not be negative and log_cleaner_backoff_ms must be positive");
        }
        if self.log_cleaner_dedupe_buffer_size < 1 << 20 {
            bail!("log_cleaner_dedupe_buffer_size must be at least 1 MiB");
        }
        if self.gc_grace_secs < 60 {
            bail!("gc_grace_secs must be at least 60: it must outlast any upload and commit");
        }
        if self.compaction_max_row_bytes == 0
            || self.compaction_target_bytes < self.compaction_max_row_bytes
        {
            bail!("compaction_max_row_bytes must be positive and at most compaction_target_bytes");
        }
        if self.compaction_bytes_per_pass == 0 {
            bail!("compaction_bytes_per_pass must be positive");
        }
        if self.compaction_test_pause_before_swap_ms > 600_000 {
            bail!("compaction_test_pause_before_swap_ms must be at most 600000 (a test setting)");
        }
        if !(0..=7 * 86_400_000).contains(&self.simulated_clock_offset_ms) {
            bail!("simulated_clock_offset_ms must be between 0 and 604800000 (a test setting)");
        }
        if let Some(spec) = &self.simulated_store_latency {
            fjord_storage::instrumented::LatencyModel::parse(spec)
                .map_err(|e| anyhow::anyhow!("simulated_store_latency: {e}"))?;
        }
        if let Some(a) = &self.metrics_listen {
            a.parse::<SocketAddr>().with_context(|| {
                format!("metrics_listen '{a}' is not HOST:PORT (an IP address and port)")
            })?;
        }
        if self.postgres_pool_size == 0 {
            bail!("postgres_pool_size must be positive");
        }
        if !(100..=3_600_000).contains(&self.broker_lease_ms) {
            bail!("broker_lease_ms must be between 100 and 3600000");
        }
        if self.message_max_bytes <= 0 {
            bail!("message_max_bytes must be positive");
        }
        if self.fetch_max_bytes <= 0 {
            bail!("fetch_max_bytes must be positive");
        }
        // One response (its limit plus the one batch that may exceed it) must fit the budget.
        let one_response = self.fetch_max_bytes as usize + self.message_max_bytes as usize;
        if self.fetch_memory_bytes < one_response {
            bail!(
                "fetch_memory_bytes ({}) must hold at least one response: fetch_max_bytes + \
                 message_max_bytes = {one_response}",
                self.fetch_memory_bytes
            );
        }
        Ok(())
    }

    /// (host, port) advertised to clients.
    pub fn advertised(&self) -> anyhow::Result<(String, i32)> {
        split_host_port(self.advertised_address.as_deref().unwrap_or(&self.listen))
    }
}

/// Parses `KEY=VALUE`.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

/// Splits `host:port` (IPv6 hosts in brackets).
pub fn split_host_port(address: &str) -> anyhow::Result<(String, i32)> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("'{address}' is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("'{address}': '{port}' is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("'{address}' has no host");
    }
    Ok((host.to_string(), i32::from(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9999\"\nflush_interval_ms = 7\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            flush_interval_ms: Some(9),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.listen, "127.0.0.1:9999");
        assert_eq!(c.flush_interval_ms, 9);
        assert_eq!(c.advertised().unwrap(), ("127.0.0.1".to_string(), 9999));

        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let err = args.resolve().unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        for bad in [
            ServeArgs {
                compaction_max_row_bytes: Some(0),
                ..Default::default()
            },
            ServeArgs {
                compaction_target_bytes: Some(1 << 20),
                compaction_max_row_bytes: Some(2 << 20),
                ..Default::default()
            },
            ServeArgs {
                simulated_clock_offset_ms: Some(-1),
                ..Default::default()
            },
            ServeArgs {
                compaction_test_pause_before_swap_ms: Some(3_600_000),
                ..Default::default()
            },
        ] {
            assert!(bad.resolve().is_err(), "{bad:?}");
        }
        let c = ServeArgs::default().resolve().unwrap();
        assert_eq!(
            (c.compaction_target_bytes, c.compaction_max_row_bytes),
            (64 << 20, 8 << 20)
        );
        assert!(split_host_port("[::1]:9092").is_ok());
        assert!(split_host_port("host").is_err());
        assert!(split_host_port("host:99999").is_err());
    }
}
