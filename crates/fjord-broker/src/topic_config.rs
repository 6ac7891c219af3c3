//! The topic configs Fjord knows: names, defaults, types and validation.
//!
//! Configs are stored and returned even where they are not enforced yet (compaction and segment
//! settings, among others), so tools and clients that set them keep working; [`not_in_force`]
//! says which and why, and `fjord topic describe` shows it next to every such setting. Unknown
//! names are rejected with INVALID_CONFIG, as Kafka does. Enforced: `max.message.bytes`,
//! `message.timestamp.type`, and `retention.ms`, `retention.bytes` and `cleanup.policy`'s
//! `delete` through [`crate::retention`], `cleanup.policy`'s `compact` with
//! `min.compaction.lag.ms`, `max.compaction.lag.ms`, `min.cleanable.dirty.ratio`,
//! `delete.retention.ms` and `segment.ms` through [`crate::cleaner`] (and a compacted topic
//! refuses records without a key). A topic that does not set `retention.ms`,
//! `retention.bytes`, `max.message.bytes` or `segment.ms` gets the broker's flag
//! ([`crate::BrokerSettings::topic_default`]), and DescribeConfigs reports that value.

use std::collections::BTreeMap;

/// Kafka's config value types (DescribeConfigs v3+ `config_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    /// true / false.
    Boolean = 1,
    /// Free text or an enumeration.
    String = 2,
    /// 32-bit integer.
    Int = 3,
    /// 64-bit integer.
    Long = 5,
    /// Floating point.
    Double = 6,
    /// Comma-separated list.
    List = 7,
}

/// One known topic config.
#[derive(Debug, Clone, Copy)]
pub struct ConfigDef {
    /// Config name.
    pub name: &'static str,
    /// Default value.
    pub default: &'static str,
    /// Value type.
    pub kind: ConfigType,
    /// Allowed values for enumerations (each list element for lists).
    pub allowed: &'static [&'static str],
}

const fn def(name: &'static str, default: &'static str, kind: ConfigType) -> ConfigDef {
    ConfigDef {
        name,
        default,
        kind,
        allowed: &[],
    }
}

/// Every known topic config, sorted by name.
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    ConfigDef {
        name: "cleanup.policy",
        default: "delete",
        kind: ConfigType::List,
        allowed: &["delete", "compact"],
    },
    ConfigDef {
        name: "compression.type",
        default: "producer",
        kind: ConfigType::String,
        allowed: &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"],
    },
    def("delete.retention.ms", "86400000", ConfigType::Long),
    def("file.delete.delay.ms", "60000", ConfigType::Long),
    def("flush.messages", "9223372036854775807", ConfigType::Long),
    def("flush.ms", "9223372036854775807", ConfigType::Long),
    def("local.retention.bytes", "-2", ConfigType::Long),
    def("local.retention.ms", "-2", ConfigType::Long),
    def(
        "max.compaction.lag.ms",
        "9223372036854775807",
        ConfigType::Long,
    ),
    def("max.message.bytes", "1048588", ConfigType::Int),
    def("message.downconversion.enable", "true", ConfigType::Boolean),
    def(
        "message.timestamp.after.max.ms",
        "9223372036854775807",
        ConfigType::Long,
    ),
    def(
        "message.timestamp.before.max.ms",
        "9223372036854775807",
        ConfigType::Long,
    ),
    def(
        "message.timestamp.difference.max.ms",
        "9223372036854775807",
        ConfigType::Long,
    ),
    ConfigDef {
        name: "message.timestamp.type",
        default: "CreateTime",
        kind: ConfigType::String,
        allowed: &["CreateTime", "LogAppendTime"],
    },
    def("min.cleanable.dirty.ratio", "0.5", ConfigType::Double),
    def("min.compaction.lag.ms", "0", ConfigType::Long),
    def("min.insync.replicas", "1", ConfigType::Int),
    def("preallocate", "false", ConfigType::Boolean),
    def("remote.storage.enable", "false", ConfigType::Boolean),
    def("retention.bytes", "-1", ConfigType::Long),
    def("retention.ms", "604800000", ConfigType::Long),
    def("segment.bytes", "1073741824", ConfigType::Int),
    def("segment.index.bytes", "10485760", ConfigType::Int),
    def("segment.jitter.ms", "0", ConfigType::Long),
    def("segment.ms", "604800000", ConfigType::Long),
    def(
        "unclean.leader.election.enable",
        "false",
        ConfigType::Boolean,
    ),
];

/// Whether a topic's `cleanup.policy` (Kafka's default `delete` when unset) includes `policy`.
pub fn has_cleanup_policy(configs: &BTreeMap<String, String>, policy: &str) -> bool {
    configs
        .get("cleanup.policy")
        .map_or("delete", String::as_str)
        .split(',')
        .any(|p| p.trim() == policy)
}

/// A topic's integer config `key`, or `default` when it is unset or not an integer (values are
/// validated when set, so the default stands for "unset").
pub fn long_config(configs: &BTreeMap<String, String>, key: &str, default: i64) -> i64 {
    configs
        .get(key)
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(default)
}

/// Why a topic config set to `value` is not in force on Fjord, if it is not. Tools may set any
/// Kafka topic config and Fjord stores it, but `fjord topic describe` must never present a stored
/// setting as one in force. `cleanup_policy` is the topic's policy (retention applies only with
/// `delete` in it).
pub fn not_in_force(name: &str, _value: &str, cleanup_policy: &str) -> Option<&'static str> {
    let has = |policy: &str| cleanup_policy.split(',').any(|p| p.trim() == policy);
    match name {
        // Objects are deleted no sooner than this after their last row went (the longest of the
        // broker's delay and every topic's, as objects hold many topics' data).
        "max.message.bytes" | "message.timestamp.type" | "file.delete.delay.ms" => None,
        "retention.ms" | "retention.bytes" if !has("delete") => {
            Some("cleanup.policy has no `delete`: nothing expires")
        }
        "retention.ms" | "retention.bytes" => None,
        "cleanup.policy" => None,
        "min.compaction.lag.ms"
        | "max.compaction.lag.ms"
        | "min.cleanable.dirty.ratio"
        | "delete.retention.ms"
        | "segment.ms"
            if !has("compact") =>
        {
            Some("cleanup.policy has no `compact`: the log cleaner does not look at this topic")
        }
        "min.compaction.lag.ms"
        | "max.compaction.lag.ms"
        | "min.cleanable.dirty.ratio"
        | "delete.retention.ms"
        | "segment.ms" => None,
        "min.insync.replicas"
        | "unclean.leader.election.enable"
        | "preallocate"
        | "flush.messages"
        | "flush.ms"
        | "segment.bytes"
        | "segment.index.bytes"
        | "segment.jitter.ms"
        | "local.retention.bytes"
        | "local.retention.ms"
        | "remote.storage.enable"
        | "message.downconversion.enable" => Some(
            "does not apply: records are stored in object storage, not in local segments or replicas",
        ),
        _ => Some("stored only: Fjord does not act on it yet"),
    }
}

/// The definition of a known config.
pub fn lookup(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks a config value; the error says why it is refused.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let def = lookup(name).ok_or_else(|| format!("unknown topic config '{name}'"))?;
    let ok = match def.kind {
        ConfigType::Boolean => matches!(value, "true" | "false"),
        ConfigType::Int => value.trim().parse::<i32>().is_ok(),
        ConfigType::Long => value.trim().parse::<i64>().is_ok(),
        ConfigType::Double => value.trim().parse::<f64>().is_ok_and(f64::is_finite),
        ConfigType::String => def.allowed.is_empty() || def.allowed.contains(&value),
        ConfigType::List => value
            .split(',')
            .map(str::trim)
            .all(|v| def.allowed.is_empty() || def.allowed.contains(&v)),
    };
    if !ok {
        return Err(if def.allowed.is_empty() {
            format!(
                "invalid value '{value}' for {name} (expected {:?})",
                def.kind
            )
        } else {
            format!(
                "invalid value '{value}' for {name} (allowed: {})",
                def.allowed.join(", ")
            )
        });
    }
    if name == "max.message.bytes" && value.trim().parse::<i32>().is_ok_and(|v| v < 0) {
        return Err(format!("{name} must not be negative"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_and_validated() {
        assert!(TOPIC_CONFIGS.windows(2).all(|w| w[0].name < w[1].name));
        for d in TOPIC_CONFIGS {
            validate(d.name, d.default).unwrap();
        }
        assert!(validate("retention.ms", "abc").is_err());
    }

    /// A setting Fjord stores but does not act on is never shown as in force.
    #[test]
    fn settings_not_in_force_say_so() {
        assert_eq!(not_in_force("retention.ms", "1000", "delete"), None);
        assert_eq!(
            not_in_force("retention.bytes", "10", "compact,delete"),
            None
        );
        assert!(not_in_force("retention.ms", "1000", "compact").is_some());
        assert_eq!(not_in_force("cleanup.policy", "compact", "compact"), None);
        assert_eq!(
            not_in_force("cleanup.policy", "delete,compact", "delete,compact"),
            None
        );
        assert_eq!(not_in_force("cleanup.policy", "delete", "delete"), None);
        assert_eq!(not_in_force("max.message.bytes", "100", "delete"), None);
        for name in [
            "min.compaction.lag.ms",
            "max.compaction.lag.ms",
            "min.cleanable.dirty.ratio",
            "delete.retention.ms",
            "segment.ms",
        ] {
            assert_eq!(not_in_force(name, "100", "compact"), None, "{name}");
            assert_eq!(not_in_force(name, "100", "compact,delete"), None, "{name}");
            assert!(not_in_force(name, "100", "delete").is_some(), "{name}");
        }
        assert!(not_in_force("segment.bytes", "100", "compact").is_some());
        for def in TOPIC_CONFIGS {
            // Every config has an answer; an unknown one is "stored only".
            let _ = not_in_force(def.name, def.default, "delete");
        }
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "bogus").is_err());
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("no.such.config", "1").is_err());
    }
}
