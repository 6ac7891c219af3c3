//! The broker's listeners from its settings, as Kafka's `listeners`, `advertised.listeners` and
//! `inter.broker.listener.name`: each listener's name, security protocol, bind address and the
//! address its clients are told, plus the TLS files of `SSL` listeners.
//!
//! Everything that cannot work is refused here, before anything binds, with the setting named:
//! an unknown or unsupported protocol, a duplicate name, an advertised address for no listener,
//! a wildcard bind address nobody could connect to, TLS settings with no `SSL` listener to use
//! them (a setting must never look in force when it is not), an `SSL` listener without a
//! certificate, SASL settings with no `SASL_*` listener, a SASL mechanism Fjord does not serve,
//! OAUTHBEARER without a JWKS, OAUTHBEARER settings with OAUTHBEARER not enabled.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use fjord_broker::sasl::{Mechanism, SaslSettings};
use fjord_broker::session::SecurityProtocol;
use fjord_coordinator::state::{is_listener_name, MAX_BROKER_LISTENERS};
use fjord_coordinator::ListenerEndpoint;
use fjord_tls::{ClientAuth, PrincipalMapper, TlsFiles};

use crate::config::{split_host_port, ServeConfig};
use fjord_jwks::{JwksSource, OAuthSettings};

/// One listener to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// Its name (Kafka's listener name).
    pub name: String,
    /// How its connections are secured.
    pub protocol: SecurityProtocol,
    /// The address it binds (`IP:PORT`).
    pub bind: String,
    /// The host and port its clients are told.
    pub advertised: (String, i32),
}

/// Every listener of the broker and what they share.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// The listeners, in the order given.
    pub specs: Vec<ListenerSpec>,
    /// Index into `specs` of the listener brokers reach each other on.
    pub inter_broker: usize,
    /// The TLS files, when a listener uses TLS.
    pub tls: Option<TlsFiles>,
    /// Principal names from client certificates.
    pub principals: PrincipalMapper,
    /// SASL settings, when a listener uses SASL.
    pub sasl: Option<SaslSettings>,
    /// OAUTHBEARER's settings, when it is enabled.
    pub oauthbearer: Option<OAuthSettings>,
}

impl Listeners {
    /// The listener brokers reach each other on.
    pub fn inter_broker(&self) -> &ListenerSpec {
        &self.specs[self.inter_broker]
    }

    /// What the broker registers: every listener's advertised address.
    pub fn endpoints(&self) -> Vec<ListenerEndpoint> {
        self.specs
            .iter()
            .map(|l| ListenerEndpoint {
                name: l.name.clone(),
                host: l.advertised.0.clone(),
                port: l.advertised.1,
                security_protocol: l.protocol.name().to_string(),
            })
            .collect()
    }
}

/// Resolves the listeners of `c`.
pub fn resolve(c: &ServeConfig) -> anyhow::Result<Listeners> {
    let specs = if c.listeners.is_empty() {
        vec![ListenerSpec {
            name: "PLAINTEXT".into(),
            protocol: SecurityProtocol::Plaintext,
            bind: c.listen.clone(),
            advertised: c.advertised()?,
        }]
    } else {
        if c.advertised_address.is_some() {
            bail!("advertised_address goes with listen; with listeners, use advertised_listeners (NAME=HOST:PORT)");
        }
        if c.listen != ServeConfig::default().listen {
            bail!(
                "listen and listeners are both set: use listeners alone (e.g. PLAINTEXT://{})",
                c.listen
            );
        }
        listeners(c)?
    };
    let inter_broker = match &c.inter_broker_listener_name {
        None => 0,
        Some(name) => specs
            .iter()
            .position(|l| l.name == *name)
            .with_context(|| format!("inter_broker_listener_name {name} names no listener"))?,
    };
    let principals = PrincipalMapper::parse(&c.ssl_principal_mapping_rules)?;
    let client_auth: ClientAuth = c
        .ssl_client_auth
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let tls = if specs.iter().any(|l| l.protocol.uses_tls()) {
        let (Some(cert), Some(key)) = (&c.ssl_cert_file, &c.ssl_key_file) else {
            bail!("an SSL listener needs ssl_cert_file and ssl_key_file (--ssl-cert-file, --ssl-key-file)");
        };
        if client_auth != ClientAuth::None && c.ssl_client_ca_file.is_none() {
            bail!("ssl_client_auth {} needs ssl_client_ca_file, the CAs client certificates must chain to", c.ssl_client_auth);
        }
        Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: c.ssl_client_ca_file.clone(),
            client_auth,
        })
    } else {
        let set = [
            ("ssl_cert_file", c.ssl_cert_file.is_some()),
            ("ssl_key_file", c.ssl_key_file.is_some()),
            ("ssl_client_ca_file", c.ssl_client_ca_file.is_some()),
            ("ssl_client_auth", client_auth != ClientAuth::None),
        ];
        if let Some((name, _)) = set.iter().find(|(_, set)| *set) {
            bail!(
                "{name} is set but no listener uses SSL (add e.g. --listener SSL://0.0.0.0:9093)"
            );
        }
        None
    };
    let (sasl, oauthbearer) = sasl(c, &specs)?;
    Ok(Listeners {
        specs,
        inter_broker,
        tls,
        principals,
        sasl,
        oauthbearer,
    })
}

/// The OAUTHBEARER settings that differ from their defaults.
fn oauth_settings_set(c: &ServeConfig) -> Vec<&'static str> {
    let d = ServeConfig::default();
    [
        (
            "sasl_oauthbearer_jwks_endpoint_url",
            c.sasl_oauthbearer_jwks_endpoint_url.is_some(),
        ),
        (
            "sasl_oauthbearer_jwks_endpoint_refresh_ms",
            c.sasl_oauthbearer_jwks_endpoint_refresh_ms
                != d.sasl_oauthbearer_jwks_endpoint_refresh_ms,
        ),
        (
            "sasl_oauthbearer_expected_issuer",
            c.sasl_oauthbearer_expected_issuer.is_some(),
        ),
        (
            "sasl_oauthbearer_expected_audience",
            !c.sasl_oauthbearer_expected_audience.is_empty(),
        ),
        (
            "sasl_oauthbearer_sub_claim_name",
            c.sasl_oauthbearer_sub_claim_name != d.sasl_oauthbearer_sub_claim_name,
        ),
        (
            "sasl_oauthbearer_clock_skew_seconds",
            c.sasl_oauthbearer_clock_skew_seconds != d.sasl_oauthbearer_clock_skew_seconds,
        ),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

/// SASL's settings and OAUTHBEARER's. With the default mechanisms, a JWKS adds OAUTHBEARER to
/// them; with mechanisms given, OAUTHBEARER must be among them for its settings to be allowed.
fn sasl(
    c: &ServeConfig,
    specs: &[ListenerSpec],
) -> anyhow::Result<(Option<SaslSettings>, Option<OAuthSettings>)> {
    let uses_sasl = specs.iter().any(|l| {
        matches!(
            l.protocol,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    });
    let defaults = ServeConfig::default();
    if !uses_sasl {
        let set = [
            (
                "sasl_enabled_mechanisms",
                c.sasl_enabled_mechanisms != defaults.sasl_enabled_mechanisms,
            ),
            (
                "connections_max_reauth_ms",
                c.connections_max_reauth_ms != defaults.connections_max_reauth_ms,
            ),
        ];
        let oauth = oauth_settings_set(c);
        let name = set
            .iter()
            .find(|(_, set)| *set)
            .map(|(name, _)| *name)
            .or(oauth.first().copied());
        if let Some(name) = name {
            bail!("{name} is set but no listener uses SASL (add e.g. --listener SASL_SSL://0.0.0.0:9094)");
        }
        return Ok((None, None));
    }
    let mut mechanisms = Vec::new();
    for name in &c.sasl_enabled_mechanisms {
        let name = name.trim();
        let mechanism = Mechanism::from_name(name).with_context(|| {
            format!(
                "SASL mechanism {name:?} is not served; choose from SCRAM-SHA-512, SCRAM-SHA-256, PLAIN, OAUTHBEARER"
            )
        })?;
        if !mechanisms.contains(&mechanism) {
            mechanisms.push(mechanism);
        }
    }
    if c.sasl_enabled_mechanisms == defaults.sasl_enabled_mechanisms
        && c.sasl_oauthbearer_jwks_endpoint_url.is_some()
    {
        mechanisms.push(Mechanism::OAuthBearer);
    }
    let oauthbearer = if mechanisms.contains(&Mechanism::OAuthBearer) {
        Some(oauth(c)?)
    } else {
        if let Some(name) = oauth_settings_set(c).first() {
            bail!("{name} is set but OAUTHBEARER is not in sasl_enabled_mechanisms");
        }
        None
    };
    if mechanisms.is_empty() {
        bail!("sasl_enabled_mechanisms is empty: a SASL listener needs at least one mechanism");
    }
    if c.connections_max_reauth_ms < 0 {
        bail!("connections_max_reauth_ms must be 0 (never) or more");
    }
    let settings = SaslSettings {
        mechanisms,
        reauth_ms: c.connections_max_reauth_ms,
        failure_delay: std::time::Duration::from_millis(
            c.connection_failed_authentication_delay_ms,
        ),
        failures_per_minute: c.sasl_failed_authentications_per_minute,
        ..SaslSettings::default()
    };
    Ok((Some(settings), oauthbearer))
}

fn oauth(c: &ServeConfig) -> anyhow::Result<OAuthSettings> {
    let Some(url) = &c.sasl_oauthbearer_jwks_endpoint_url else {
        bail!("OAUTHBEARER is enabled but sasl_oauthbearer_jwks_endpoint_url is not set: tokens cannot be checked without the issuer's keys (a JWKS: file:///path/jwks.json or https://idp/.well-known/jwks.json)");
    };
    let source = JwksSource::parse(url)?;
    let sub_claim = c.sasl_oauthbearer_sub_claim_name.trim();
    if sub_claim.is_empty() {
        bail!("sasl_oauthbearer_sub_claim_name is empty");
    }
    let issuer = match c.sasl_oauthbearer_expected_issuer.as_deref().map(str::trim) {
        Some("") => bail!("sasl_oauthbearer_expected_issuer is empty"),
        other => other.map(str::to_string),
    };
    let audience: Vec<String> = c
        .sasl_oauthbearer_expected_audience
        .iter()
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    if audience.len() != c.sasl_oauthbearer_expected_audience.len() {
        bail!("sasl_oauthbearer_expected_audience has an empty entry");
    }
    if c.sasl_oauthbearer_clock_skew_seconds > 3600 {
        bail!("sasl_oauthbearer_clock_skew_seconds is more than an hour");
    }
    if c.sasl_oauthbearer_jwks_endpoint_refresh_ms < 1000 {
        bail!("sasl_oauthbearer_jwks_endpoint_refresh_ms must be at least 1000");
    }
    Ok(OAuthSettings {
        source,
        refresh: std::time::Duration::from_millis(c.sasl_oauthbearer_jwks_endpoint_refresh_ms),
        jwt: fjord_auth::oauth::JwtConfig {
            issuer,
            audience,
            sub_claim: sub_claim.to_string(),
            clock_skew_ms: (c.sasl_oauthbearer_clock_skew_seconds * 1000) as i64,
        },
    })
}

fn listeners(c: &ServeConfig) -> anyhow::Result<Vec<ListenerSpec>> {
    if c.listeners.len() > MAX_BROKER_LISTENERS {
        bail!("at most {MAX_BROKER_LISTENERS} listeners");
    }
    let mut specs: Vec<ListenerSpec> = Vec::new();
    for entry in &c.listeners {
        let entry = entry.trim();
        let (name, url) = match entry.split_once('=') {
            Some((name, url)) if !name.contains("://") => (Some(name.trim()), url.trim()),
            _ => (None, entry),
        };
        let (protocol, bind) = url.split_once("://").with_context(|| {
            format!("listener '{entry}' is not NAME=PROTOCOL://IP:PORT or PROTOCOL://IP:PORT")
        })?;
        let protocol: SecurityProtocol = protocol
            .parse()
            .map_err(|e: String| anyhow::anyhow!("listener '{entry}': {e}"))?;
        let name = name.unwrap_or(protocol.name()).to_string();
        if !is_listener_name(&name) {
            bail!("listener name '{name}' must be 1 to 64 letters, digits, '_' or '-'");
        }
        if specs.iter().any(|l| l.name == name) {
            bail!("listener {name} is given twice");
        }
        let address: SocketAddr = bind.parse().with_context(|| {
            format!("listener {name}: '{bind}' is not IP:PORT (e.g. 0.0.0.0:9092)")
        })?;
        specs.push(ListenerSpec {
            name,
            protocol,
            bind: bind.to_string(),
            advertised: (address.ip().to_string(), i32::from(address.port())),
        });
    }
    let mut advertised_names = Vec::new();
    for entry in &c.advertised_listeners {
        let (name, address) = entry
            .trim()
            .split_once('=')
            .with_context(|| format!("advertised listener '{entry}' is not NAME=HOST:PORT"))?;
        let name = name.trim();
        let spec = specs
            .iter_mut()
            .find(|l| l.name == name)
            .with_context(|| format!("advertised listener {name} names no listener"))?;
        if advertised_names.contains(&name) {
            bail!("advertised listener {name} is given twice");
        }
        advertised_names.push(name);
        spec.advertised = split_host_port(address.trim())
            .with_context(|| format!("advertised listener {name}"))?;
    }
    for spec in &specs {
        let unspecified = spec
            .bind
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_unspecified());
        if unspecified && !advertised_names.contains(&spec.name.as_str()) {
            bail!(
                "listener {} binds {}, which clients cannot connect to: say where they reach it with --advertised-listener {}=HOST:PORT",
                spec.name, spec.bind, spec.name
            );
        }
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn config(listeners: &[&str], advertised: &[&str]) -> ServeConfig {
        ServeConfig {
            listeners: listeners.iter().map(|s| s.to_string()).collect(),
            advertised_listeners: advertised.iter().map(|s| s.to_string()).collect(),
            ..ServeConfig::default()
        }
    }

    fn with_tls(mut c: ServeConfig) -> ServeConfig {
        c.ssl_cert_file = Some(PathBuf::from("cert.pem"));
        c.ssl_key_file = Some(PathBuf::from("key.pem"));
        c
    }

    #[test]
    fn listen_alone_is_one_plaintext_listener() {
        let l = resolve(&ServeConfig::default()).unwrap();
        assert_eq!(
            l.specs,
            vec![ListenerSpec {
                name: "PLAINTEXT".into(),
                protocol: SecurityProtocol::Plaintext,
                bind: "127.0.0.1:9092".into(),
                advertised: ("127.0.0.1".into(), 9092),
            }]
        );
        assert!(l.tls.is_none());
    }

    #[test]
    fn listeners_are_named_and_advertised_as_in_kafka() {
        let c = with_tls(config(
            &["INTERNAL=PLAINTEXT://0.0.0.0:9092", "SSL://127.0.0.1:9093"],
            &["INTERNAL=broker-1.internal:9092"],
        ));
        let l = resolve(&c).unwrap();
        let names: Vec<_> = l.specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["INTERNAL", "SSL"]);
        assert_eq!(l.inter_broker().name, "INTERNAL");
        assert_eq!(
            l.endpoints()[0],
            ListenerEndpoint {
                name: "INTERNAL".into(),
                host: "broker-1.internal".into(),
                port: 9092,
                security_protocol: "PLAINTEXT".into(),
            }
        );
        assert_eq!(l.specs[1].advertised, ("127.0.0.1".into(), 9093));
        assert_eq!(l.tls.unwrap().client_auth, ClientAuth::None);

        let mut c = c;
        c.inter_broker_listener_name = Some("SSL".into());
        assert_eq!(resolve(&c).unwrap().inter_broker().name, "SSL");
    }

    #[test]
    fn sasl_listeners_get_the_sasl_settings() {
        let mut c = with_tls(config(
            &[
                "INTERNAL=SASL_PLAINTEXT://1.2.3.4:1",
                "EXTERNAL=SASL_SSL://1.2.3.4:2",
            ],
            &[],
        ));
        c.sasl_enabled_mechanisms = vec!["scram-sha-256".into(), "PLAIN".into()];
        c.connections_max_reauth_ms = 60_000;
        let l = resolve(&c).unwrap();
        let sasl = l.sasl.unwrap();
        assert_eq!(
            sasl.mechanisms,
            vec![
                Mechanism::Scram(fjord_coordinator::security::ScramMechanism::Sha256),
                Mechanism::Plain
            ]
        );
        assert_eq!(sasl.reauth_ms, 60_000);
        assert!(l.tls.is_some());
        assert!(resolve(&config(&["PLAINTEXT://1.2.3.4:1"], &[]))
            .unwrap()
            .sasl
            .is_none());
    }

    #[test]
    fn oauthbearer_needs_a_jwks_and_its_settings_need_oauthbearer() {
        let refused = |c: ServeConfig, expected: &str| {
            let err = format!("{:#}", resolve(&c).unwrap_err());
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        };
        let sasl = || config(&["SASL_PLAINTEXT://1.2.3.4:1"], &[]);
        // The defaults do not offer OAUTHBEARER.
        let l = resolve(&sasl()).unwrap();
        assert!(!l.sasl.unwrap().mechanisms.contains(&Mechanism::OAuthBearer));
        assert!(l.oauthbearer.is_none());
        // Enabled without a JWKS.
        let mut c = sasl();
        c.sasl_enabled_mechanisms = vec!["OAUTHBEARER".into(), "PLAIN".into()];
        refused(c.clone(), "sasl_oauthbearer_jwks_endpoint_url is not set");
        // Enabled with one.
        c.sasl_oauthbearer_jwks_endpoint_url = Some("file:///etc/fjord/jwks.json".into());
        c.sasl_oauthbearer_expected_audience = vec!["kafka".into(), " other ".into()];
        c.sasl_oauthbearer_expected_issuer = Some("https://idp".into());
        c.sasl_oauthbearer_clock_skew_seconds = 5;
        let l = resolve(&c).unwrap();
        assert_eq!(
            l.sasl.unwrap().mechanisms,
            vec![Mechanism::OAuthBearer, Mechanism::Plain]
        );
        let o = l.oauthbearer.unwrap();
        assert_eq!(o.source, JwksSource::File("/etc/fjord/jwks.json".into()));
        assert_eq!(o.jwt.audience, ["kafka", "other"]);
        assert_eq!(o.jwt.issuer.as_deref(), Some("https://idp"));
        assert_eq!(o.jwt.clock_skew_ms, 5_000);
        assert_eq!(o.jwt.sub_claim, "sub");
        // A JWKS with the default mechanisms adds OAUTHBEARER to them.
        let mut c = sasl();
        c.sasl_oauthbearer_jwks_endpoint_url = Some("https://idp/jwks".into());
        let mechanisms = resolve(&c).unwrap().sasl.unwrap().mechanisms;
        assert_eq!(mechanisms.len(), 4);
        assert!(mechanisms.contains(&Mechanism::OAuthBearer));
        // OAUTHBEARER settings with mechanisms given without it.
        for set in [
            |c: &mut ServeConfig| {
                c.sasl_oauthbearer_jwks_endpoint_url = Some("https://idp/jwks".into())
            },
            |c: &mut ServeConfig| c.sasl_oauthbearer_expected_issuer = Some("x".into()),
            |c: &mut ServeConfig| c.sasl_oauthbearer_expected_audience = vec!["x".into()],
            |c: &mut ServeConfig| c.sasl_oauthbearer_sub_claim_name = "email".into(),
            |c: &mut ServeConfig| c.sasl_oauthbearer_clock_skew_seconds = 0,
            |c: &mut ServeConfig| c.sasl_oauthbearer_jwks_endpoint_refresh_ms = 5_000,
        ] {
            let mut c = sasl();
            c.sasl_enabled_mechanisms = vec!["SCRAM-SHA-512".into()];
            set(&mut c);
            refused(c.clone(), "OAUTHBEARER is not in sasl_enabled_mechanisms");
            // Default mechanisms, no JWKS: still refused (OAUTHBEARER is not enabled).
            let mut d = sasl();
            set(&mut d);
            if d.sasl_oauthbearer_jwks_endpoint_url.is_none() {
                refused(d, "OAUTHBEARER is not in sasl_enabled_mechanisms");
            }
            // No SASL listener at all.
            let mut p = config(&["PLAINTEXT://1.2.3.4:1"], &[]);
            set(&mut p);
            refused(p, "no listener uses SASL");
        }
        // Bad values.
        let mut c = sasl();
        c.sasl_enabled_mechanisms = vec!["OAUTHBEARER".into()];
        c.sasl_oauthbearer_jwks_endpoint_url = Some("ftp://idp/jwks".into());
        refused(c.clone(), "must start with file://");
        c.sasl_oauthbearer_jwks_endpoint_url = Some("file://jwks.json".into());
        refused(c.clone(), "absolute path");
        c.sasl_oauthbearer_jwks_endpoint_url = Some("file:///jwks.json".into());
        c.sasl_oauthbearer_sub_claim_name = " ".into();
        refused(c.clone(), "sasl_oauthbearer_sub_claim_name is empty");
        c.sasl_oauthbearer_sub_claim_name = "sub".into();
        c.sasl_oauthbearer_expected_audience = vec!["".into()];
        refused(c.clone(), "empty entry");
        c.sasl_oauthbearer_expected_audience.clear();
        c.sasl_oauthbearer_clock_skew_seconds = 86_400;
        refused(c, "more than an hour");
    }

    #[test]
    fn what_cannot_work_is_refused_with_the_setting_named() {
        let refused = |c: ServeConfig, expected: &str| {
            let err = format!("{:#}", resolve(&c).unwrap_err());
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        };
        refused(
            config(&["A=PLAINTEXT://1.2.3.4:1", "A=SSL://1.2.3.4:2"], &[]),
            "given twice",
        );
        refused(
            config(&["PLAINTEXT://0.0.0.0:9092"], &[]),
            "--advertised-listener PLAINTEXT=HOST:PORT",
        );
        refused(config(&["X=TLS://1.2.3.4:1"], &[]), "expected PLAINTEXT");
        refused(
            config(&["SASL_SSL://1.2.3.4:1"], &[]),
            "needs ssl_cert_file",
        );
        let mut gssapi = config(&["SASL_PLAINTEXT://1.2.3.4:1"], &[]);
        gssapi.sasl_enabled_mechanisms = vec!["GSSAPI".into()];
        refused(gssapi, "is not served");
        let mut none = config(&["SASL_PLAINTEXT://1.2.3.4:1"], &[]);
        none.sasl_enabled_mechanisms.clear();
        refused(none, "at least one mechanism");
        let mut sasl_unused = config(&["PLAINTEXT://1.2.3.4:1"], &[]);
        sasl_unused.connections_max_reauth_ms = 60_000;
        refused(sasl_unused, "no listener uses SASL");
        refused(config(&["PLAINTEXT://localhost:1"], &[]), "is not IP:PORT");
        refused(
            config(&["PLAINTEXT://1.2.3.4:1"], &["B=h:1"]),
            "names no listener",
        );
        refused(config(&["SSL://1.2.3.4:1"], &[]), "needs ssl_cert_file");
        refused(
            config(&["bad name=PLAINTEXT://1.2.3.4:1"], &[]),
            "listener name",
        );
        let mut tls_unused = config(&["PLAINTEXT://1.2.3.4:1"], &[]);
        tls_unused.ssl_cert_file = Some(PathBuf::from("c.pem"));
        refused(tls_unused, "no listener uses SSL");
        let mut auth_without_ca = with_tls(config(&["SSL://1.2.3.4:1"], &[]));
        auth_without_ca.ssl_client_auth = "required".into();
        refused(auth_without_ca, "needs ssl_client_ca_file");
        let mut both = config(&["PLAINTEXT://1.2.3.4:1"], &[]);
        both.listen = "127.0.0.1:1".into();
        refused(both, "both set");
        let mut rules = with_tls(config(&["SSL://1.2.3.4:1"], &[]));
        rules.ssl_principal_mapping_rules = "RULE:oops".into();
        refused(rules, "mapping rules");
        let mut inter = config(&["PLAINTEXT://1.2.3.4:1"], &[]);
        inter.inter_broker_listener_name = Some("NOPE".into());
        refused(inter, "names no listener");
    }
}
