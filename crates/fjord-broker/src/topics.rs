//! Topic lookups shared by the handlers: name validation and automatic creation.

use std::collections::BTreeMap;

use fjord_coordinator::{CoordinatorError, TopicMeta, TopicSpec};
use kafka_protocol::ResponseError;

use crate::error::coordinator_code;
use crate::Broker;

/// Kafka's rule for topic names.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name '{name}' is not allowed"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters, at most 249 allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name '{name}' contains '{c}'; only ASCII letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

impl Broker {
    /// Looks a topic up by name, creating it when `auto_create` and the broker allow it.
    pub(crate) async fn resolve_topic(
        &self,
        name: &str,
        auto_create: bool,
    ) -> Result<TopicMeta, ResponseError> {
        match self.coordinator.topic(name).await {
            Ok(Some(meta)) => return Ok(meta),
            Ok(None) => {}
            Err(e) => return Err(coordinator_code(&e)),
        }
        if validate_name(name).is_err() {
            return Err(ResponseError::InvalidTopicException);
        }
        if !(auto_create && self.settings.auto_create_topics) {
            return Err(ResponseError::UnknownTopicOrPartition);
        }
        let spec = TopicSpec {
            name: name.to_string(),
            partitions: self.settings.default_partitions,
            configs: BTreeMap::new(),
        };
        match self.coordinator.create_topic(spec).await {
            Ok(meta) => {
                tracing::info!(
                    topic = name,
                    partitions = meta.partitions,
                    "auto-created topic"
                );
                Ok(meta)
            }
            // Another request created it first.
            Err(CoordinatorError::TopicExists(_)) => match self.coordinator.topic(name).await {
                Ok(Some(meta)) => Ok(meta),
                Ok(None) => Err(ResponseError::UnknownTopicOrPartition),
                Err(e) => Err(coordinator_code(&e)),
            },
            Err(e) => Err(coordinator_code(&e)),
        }
    }

    /// Largest batch accepted for a topic.
    pub(crate) fn max_message_bytes(&self, topic: &TopicMeta) -> usize {
        topic
            .configs
            .get("max.message.bytes")
            .and_then(|v| v.trim().parse::<i32>().ok())
            .unwrap_or(self.settings.message_max_bytes)
            .max(0) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("orders.v1_x-y").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("..").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&"x".repeat(250)).is_err());
    }
}
