//! The broker's listeners from its settings, as Kafka's `listeners`, `advertised.listeners` and
//! `inter.broker.listener.name`: each listener's name, security protocol, bind address and the
//! address its clients are told, plus the TLS files of `SSL` listeners.
//!
//! Everything that cannot work is refused here, before anything binds, with the setting named:
//! an unknown or unsupported protocol, a duplicate name, an advertised address for no listener,
//! a wildcard bind address nobody could connect to, TLS settings with no `SSL` listener to use
//! them (a setting must never look in force when it is not), an `SSL` listener without a
//! certificate, SASL settings with no `SASL_*` listener, a SASL mechanism Fjord does not serve.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use fjord_broker::sasl::{Mechanism, SaslSettings};
use fjord_broker::session::SecurityProtocol;
use fjord_coordinator::state::{is_listener_name, MAX_BROKER_LISTENERS};
use fjord_coordinator::ListenerEndpoint;
use fjord_tls::{ClientAuth, PrincipalMapper, TlsFiles};

use crate::config::{split_host_port, ServeConfig};

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
    let sasl = sasl(c, &specs)?;
    Ok(Listeners {
        specs,
        inter_broker,
        tls,
        principals,
        sasl,
    })
}

fn sasl(c: &ServeConfig, specs: &[ListenerSpec]) -> anyhow::Result<Option<SaslSettings>> {
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
        if let Some((name, _)) = set.iter().find(|(_, set)| *set) {
            bail!("{name} is set but no listener uses SASL (add e.g. --listener SASL_SSL://0.0.0.0:9094)");
        }
        return Ok(None);
    }
    let mut mechanisms = Vec::new();
    for name in &c.sasl_enabled_mechanisms {
        let name = name.trim();
        let mechanism = Mechanism::from_name(name).with_context(|| {
            format!(
                "SASL mechanism {name:?} is not served; choose from SCRAM-SHA-512, SCRAM-SHA-256, PLAIN"
            )
        })?;
        if !mechanisms.contains(&mechanism) {
            mechanisms.push(mechanism);
        }
    }
    if mechanisms.is_empty() {
        bail!("sasl_enabled_mechanisms is empty: a SASL listener needs at least one mechanism");
    }
    if c.connections_max_reauth_ms < 0 {
        bail!("connections_max_reauth_ms must be 0 (never) or more");
    }
    Ok(Some(SaslSettings {
        mechanisms,
        reauth_ms: c.connections_max_reauth_ms,
        failure_delay: std::time::Duration::from_millis(
            c.connection_failed_authentication_delay_ms,
        ),
        failures_per_minute: c.sasl_failed_authentications_per_minute,
        ..SaslSettings::default()
    }))
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
        let mut oauth = config(&["SASL_PLAINTEXT://1.2.3.4:1"], &[]);
        oauth.sasl_enabled_mechanisms = vec!["GSSAPI".into()];
        refused(oauth, "is not served");
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
