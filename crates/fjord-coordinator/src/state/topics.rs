//! Topic rules: creation, partition increases and config changes.

use super::*;

/// Checks the partition count of a new topic.
pub fn check_new_partition_count(partitions: i32) -> Result<()> {
    if partitions < 1 {
        return Err(CoordinatorError::Invalid(format!(
            "partition count must be at least 1, got {partitions}"
        )));
    }
    Ok(())
}

/// Checks a partition increase of topic `name` from `current` to `new_total`.
pub fn check_partition_increase(name: &str, current: i32, new_total: i32) -> Result<()> {
    if new_total <= current {
        return Err(CoordinatorError::Invalid(format!(
            "topic '{name}' has {current} partitions; the new count {new_total} must be larger"
        )));
    }
    Ok(())
}

/// Applies config changes: a `Some` value sets the key, `None` removes it.
pub fn apply_config_changes(
    configs: &mut BTreeMap<String, String>,
    changes: Vec<(String, Option<String>)>,
) {
    for (key, value) in changes {
        match value {
            Some(v) => configs.insert(key, v),
            None => configs.remove(&key),
        };
    }
}

impl State {
    /// Decides a topic creation.
    pub fn decide_create_topic(&self, spec: TopicSpec, id: Uuid) -> Result<Entry> {
        if self.topics.contains_key(&spec.name) {
            return Err(CoordinatorError::TopicExists(spec.name));
        }
        check_new_partition_count(spec.partitions)?;
        Ok(Entry::CreateTopic(TopicMeta {
            name: spec.name,
            id,
            partitions: spec.partitions,
            configs: spec.configs,
        }))
    }

    /// Decides a partition increase.
    pub fn decide_partitions(&self, name: &str, new_total: i32) -> Result<Entry> {
        let topic = self.known_topic(name)?;
        check_partition_increase(name, topic.partitions, new_total)?;
        Ok(Entry::SetPartitions {
            name: name.to_string(),
            partitions: new_total,
        })
    }

    /// Decides a config change.
    pub fn decide_configs(
        &self,
        name: &str,
        changes: Vec<(String, Option<String>)>,
    ) -> Result<Entry> {
        let mut configs = self.known_topic(name)?.configs.clone();
        apply_config_changes(&mut configs, changes);
        Ok(Entry::SetConfigs {
            name: name.to_string(),
            configs,
        })
    }
}
