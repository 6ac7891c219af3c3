//! Conformance of [`GroupStore`]: committed offsets, blobs, deletions, and the version that
//! fences writes between brokers.

use std::future::Future;
use std::sync::Arc;

use super::{is_invalid, spec};
use crate::state::{MAX_GROUP_ID_BYTES, MAX_GROUP_STATE_BYTES, MAX_OFFSET_TOPIC_BYTES};
use crate::*;

pub(super) async fn run_all<F, Fut>(fresh: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Coordinator>>,
{
    group_offsets(fresh().await).await;
    group_ids_and_topics_are_validated(fresh().await).await;
    group_offsets_deleted(fresh().await).await;
    group_blobs(fresh().await).await;
    groups_deleted(fresh().await).await;
    group_offsets_survive_topic_deletion(fresh().await).await;
    group_saves_are_compare_and_set(fresh().await).await;
    offset_writes_are_fenced_by_the_group_version(fresh().await).await;
    group_exists_without_listing(fresh().await).await;
}

/// Saves a blob over whatever version is stored (a test shortcut; brokers save over the version
/// they know).
pub(super) async fn save(c: &Arc<dyn Coordinator>, group: &str, blob: Vec<u8>) -> Result<i64> {
    let current = match c.load_group(group).await {
        Ok(stored) => stored.map_or(0, |s| s.version),
        Err(e) => return Err(e),
    };
    c.save_group(group, current, blob).await
}

/// The stored blob, without its version.
pub(super) async fn load(c: &Arc<dyn Coordinator>, group: &str) -> Result<Option<Vec<u8>>> {
    Ok(c.load_group(group).await?.map(|s| s.state))
}

pub(super) fn offset(topic: &str, partition: i32, offset: i64) -> CommittedOffset {
    CommittedOffset {
        topic: topic.into(),
        partition,
        offset,
        leader_epoch: -1,
        metadata: None,
        commit_timestamp_ms: 1_000 + offset,
    }
}

pub(super) fn with_meta(
    mut o: CommittedOffset,
    epoch: i32,
    metadata: Option<&str>,
) -> CommittedOffset {
    o.leader_epoch = epoch;
    o.metadata = metadata.map(str::to_string);
    o
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough to defeat any inline
/// compression a store might apply.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A string of exactly `len` bytes of printable ASCII noise.
fn noise_string(len: usize, seed: u64) -> String {
    noise(len, seed)
        .into_iter()
        .map(|b| char::from(b'!' + b % 94))
        .collect()
}

/// A blob holding every byte value, 0x00 and 0xff included, then noise.
pub(super) fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..=255u8).cycle().take(len.min(512)).collect();
    bytes.extend(noise(len.saturating_sub(bytes.len()), seed));
    bytes
}

async fn group_offsets(c: Arc<dyn Coordinator>) {
    assert!(c.fetch_offsets("g1").await.unwrap().is_empty());
    assert!(c.list_groups().await.unwrap().is_empty());
    // An empty commit is a no-op: no group comes into being.
    c.commit_offsets("g1", vec![], None).await.unwrap();
    assert!(c.list_groups().await.unwrap().is_empty());

    let meta = "m\0\u{ff}é\u{1F600}\n\"'\\";
    c.commit_offsets(
        "g1",
        vec![
            offset("b", 1, 10),
            with_meta(offset("a", 2, 20), 7, Some("")),
            with_meta(offset("a", 0, 30), 3, Some(meta)),
            offset("B", 0, 40),
            offset("a", 10, 50),
        ],
        None,
    )
    .await
    .unwrap();
    // Sorted by (topic, partition), topics bytewise ("B" < "a"), partitions numerically.
    let g1 = vec![
        offset("B", 0, 40),
        with_meta(offset("a", 0, 30), 3, Some(meta)),
        with_meta(offset("a", 2, 20), 7, Some("")),
        offset("a", 10, 50),
        offset("b", 1, 10),
    ];
    assert_eq!(c.fetch_offsets("g1").await.unwrap(), g1);

    // Overwrite one, add one; the others stay. A partition given twice: the last one wins.
    c.commit_offsets(
        "g1",
        vec![
            offset("a", 0, 31),
            offset("c", 0, 60),
            offset("c", 0, 61),
            offset("a", 0, 32),
        ],
        None,
    )
    .await
    .unwrap();
    let g1 = vec![
        offset("B", 0, 40),
        offset("a", 0, 32),
        with_meta(offset("a", 2, 20), 7, Some("")),
        offset("a", 10, 50),
        offset("b", 1, 10),
        offset("c", 0, 61),
    ];
    assert_eq!(c.fetch_offsets("g1").await.unwrap(), g1);

    // Groups are isolated, also ones whose ids differ only in case, a NUL or a prefix.
    let others = ["g2", "G1", "g1\0", "g", "gröup \u{1F600}"];
    for (i, group) in others.iter().enumerate() {
        c.commit_offsets(group, vec![offset("a", 0, i as i64)], None)
            .await
            .unwrap();
    }
    assert_eq!(c.fetch_offsets("g1").await.unwrap(), g1);
    for (i, group) in others.iter().enumerate() {
        assert_eq!(
            c.fetch_offsets(group).await.unwrap(),
            vec![offset("a", 0, i as i64)],
            "{group:?}"
        );
    }
    let mut expected: Vec<String> = others.iter().map(|g| g.to_string()).collect();
    expected.push("g1".into());
    expected.sort();
    assert_eq!(c.list_groups().await.unwrap(), expected);
}

async fn group_ids_and_topics_are_validated(c: Arc<dyn Coordinator>) {
    // An empty group id is refused by every call that takes one.
    assert!(is_invalid(
        c.commit_offsets("", vec![offset("a", 0, 1)], None).await
    ));
    assert!(is_invalid(c.commit_offsets("", vec![], None).await));
    assert!(is_invalid(c.fetch_offsets("").await));
    assert!(is_invalid(
        c.delete_offsets("", vec![("a".into(), 0)], None).await
    ));
    assert!(is_invalid(save(&c, "", vec![1]).await));
    assert!(is_invalid(load(&c, "").await));
    assert!(is_invalid(c.delete_group("", None).await));

    // The longest id works (and is not confused with its prefixes); one byte more does not.
    let longest = noise_string(MAX_GROUP_ID_BYTES, 7);
    let prefix = &longest[..MAX_GROUP_ID_BYTES - 1];
    c.commit_offsets(&longest, vec![offset("a", 0, 1)], None)
        .await
        .unwrap();
    save(&c, &longest, vec![1, 2]).await.unwrap();
    assert_eq!(
        c.fetch_offsets(&longest).await.unwrap(),
        vec![offset("a", 0, 1)]
    );
    assert_eq!(load(&c, &longest).await.unwrap(), Some(vec![1, 2]));
    assert!(c.fetch_offsets(prefix).await.unwrap().is_empty());
    assert_eq!(c.list_groups().await.unwrap(), vec![longest.clone()]);
    let too_long = format!("{longest}x");
    assert!(is_invalid(
        c.commit_offsets(&too_long, vec![offset("a", 0, 1)], None)
            .await
    ));
    assert!(is_invalid(c.fetch_offsets(&too_long).await));
    assert!(is_invalid(save(&c, &too_long, vec![]).await));
    assert!(is_invalid(load(&c, &too_long).await));
    assert!(is_invalid(c.delete_group(&too_long, None).await));
    assert!(c.delete_group(&longest, None).await.unwrap());

    // Topic names of 1 to 249 bytes; one bad name fails the whole commit.
    let topic = "t".repeat(MAX_OFFSET_TOPIC_BYTES);
    c.commit_offsets("g", vec![offset(&topic, 0, 5)], None)
        .await
        .unwrap();
    for bad in [String::new(), format!("{topic}t")] {
        assert!(is_invalid(
            c.commit_offsets("g", vec![offset("ok", 0, 1), offset(&bad, 0, 1)], None)
                .await
        ));
        assert!(is_invalid(
            c.commit_offsets("fresh", vec![offset(&bad, 0, 1)], None)
                .await
        ));
    }
    assert_eq!(
        c.fetch_offsets("g").await.unwrap(),
        vec![offset(&topic, 0, 5)]
    );
    assert_eq!(c.list_groups().await.unwrap(), vec!["g".to_string()]);

    // Blobs up to 16 MiB.
    assert!(is_invalid(
        save(&c, "g", vec![0; MAX_GROUP_STATE_BYTES + 1]).await
    ));
    assert_eq!(load(&c, "g").await.unwrap(), None);
}

async fn group_offsets_deleted(c: Arc<dyn Coordinator>) {
    c.commit_offsets(
        "g",
        vec![
            offset("a", 0, 1),
            offset("a", 1, 2),
            offset("b", 0, 3),
            offset("b", 1, 4),
        ],
        None,
    )
    .await
    .unwrap();
    c.commit_offsets("h", vec![offset("a", 1, 9)], None)
        .await
        .unwrap();
    // Absent partitions, unknown topics and repeats are ignored.
    c.delete_offsets(
        "g",
        vec![
            ("a".into(), 1),
            ("a".into(), 7),
            ("zz".into(), 0),
            ("b".into(), 0),
            ("b".into(), 0),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        c.fetch_offsets("g").await.unwrap(),
        vec![offset("a", 0, 1), offset("b", 1, 4)]
    );
    // Other groups keep theirs.
    assert_eq!(c.fetch_offsets("h").await.unwrap(), vec![offset("a", 1, 9)]);
    c.delete_offsets("g", vec![], None).await.unwrap();
    c.delete_offsets("unknown", vec![("a".into(), 0)], None)
        .await
        .unwrap();
    assert!(c.fetch_offsets("unknown").await.unwrap().is_empty());
    assert_eq!(c.list_groups().await.unwrap(), vec!["g", "h"]);

    // A group with neither a blob nor offsets left is gone; one with a blob stays.
    save(&c, "h", b"blob".to_vec()).await.unwrap();
    c.delete_offsets("g", vec![("a".into(), 0), ("b".into(), 1)], None)
        .await
        .unwrap();
    c.delete_offsets("h", vec![("a".into(), 1)], None)
        .await
        .unwrap();
    assert!(c.fetch_offsets("g").await.unwrap().is_empty());
    assert!(c.fetch_offsets("h").await.unwrap().is_empty());
    assert_eq!(c.list_groups().await.unwrap(), vec!["h"]);
    assert!(!c.delete_group("g", None).await.unwrap());
    // Offsets committed again after a deletion are there.
    c.commit_offsets("g", vec![offset("a", 0, 100)], None)
        .await
        .unwrap();
    assert_eq!(
        c.fetch_offsets("g").await.unwrap(),
        vec![offset("a", 0, 100)]
    );
}

async fn group_blobs(c: Arc<dyn Coordinator>) {
    assert_eq!(load(&c, "g").await.unwrap(), None);
    // An empty blob is a saved blob.
    save(&c, "g", vec![]).await.unwrap();
    assert_eq!(load(&c, "g").await.unwrap(), Some(vec![]));
    assert_eq!(c.list_groups().await.unwrap(), vec!["g"]);
    assert!(c.fetch_offsets("g").await.unwrap().is_empty());

    // Replaced, by a 1 MiB blob of arbitrary bytes, then by a small one.
    let big = blob(1 << 20, 11);
    save(&c, "g", big.clone()).await.unwrap();
    assert_eq!(load(&c, "g").await.unwrap(), Some(big.clone()));
    let small = vec![0x00, 0xff, 0x00, 0x80, 0x7f, 0xff];
    save(&c, "g", small.clone()).await.unwrap();
    assert_eq!(load(&c, "g").await.unwrap(), Some(small.clone()));

    // Blobs and offsets of other groups are independent.
    save(&c, "h", big.clone()).await.unwrap();
    c.commit_offsets("h", vec![offset("a", 0, 1)], None)
        .await
        .unwrap();
    c.commit_offsets("i", vec![offset("a", 0, 2)], None)
        .await
        .unwrap();
    assert_eq!(load(&c, "g").await.unwrap(), Some(small));
    assert_eq!(load(&c, "h").await.unwrap(), Some(big));
    assert_eq!(load(&c, "i").await.unwrap(), None);
    assert_eq!(c.fetch_offsets("h").await.unwrap(), vec![offset("a", 0, 1)]);
    assert_eq!(c.list_groups().await.unwrap(), vec!["g", "h", "i"]);
}

async fn groups_deleted(c: Arc<dyn Coordinator>) {
    save(&c, "blob-only", vec![1]).await.unwrap();
    c.commit_offsets("offsets-only", vec![offset("a", 0, 1)], None)
        .await
        .unwrap();
    save(&c, "both", vec![2]).await.unwrap();
    c.commit_offsets("both", vec![offset("a", 0, 2), offset("b", 3, 4)], None)
        .await
        .unwrap();
    save(&c, "kept", vec![3]).await.unwrap();
    c.commit_offsets("kept", vec![offset("a", 0, 5)], None)
        .await
        .unwrap();
    assert_eq!(
        c.list_groups().await.unwrap(),
        vec!["blob-only", "both", "kept", "offsets-only"]
    );

    for group in ["blob-only", "offsets-only", "both"] {
        assert!(c.delete_group(group, None).await.unwrap(), "{group}");
        assert!(!c.delete_group(group, None).await.unwrap(), "{group}");
        assert_eq!(load(&c, group).await.unwrap(), None);
        assert!(c.fetch_offsets(group).await.unwrap().is_empty());
    }
    assert!(!c.delete_group("never", None).await.unwrap());
    assert_eq!(c.list_groups().await.unwrap(), vec!["kept"]);
    assert_eq!(load(&c, "kept").await.unwrap(), Some(vec![3]));
    assert_eq!(
        c.fetch_offsets("kept").await.unwrap(),
        vec![offset("a", 0, 5)]
    );

    // A deleted group can come back.
    c.commit_offsets("both", vec![offset("z", 0, 9)], None)
        .await
        .unwrap();
    assert_eq!(load(&c, "both").await.unwrap(), None);
    assert_eq!(
        c.fetch_offsets("both").await.unwrap(),
        vec![offset("z", 0, 9)]
    );
    assert_eq!(c.list_groups().await.unwrap(), vec!["both", "kept"]);
}

async fn group_offsets_survive_topic_deletion(c: Arc<dyn Coordinator>) {
    c.create_topic(spec("t", 2)).await.unwrap();
    c.create_topic(spec("u", 1)).await.unwrap();
    let committed = vec![offset("t", 0, 5), offset("t", 1, 6), offset("u", 0, 7)];
    c.commit_offsets("g", committed.clone(), None)
        .await
        .unwrap();
    save(&c, "g", vec![9]).await.unwrap();
    c.delete_topic("t").await.unwrap();
    assert_eq!(c.fetch_offsets("g").await.unwrap(), committed);
    // Also when the name is used again.
    c.create_topic(spec("t", 1)).await.unwrap();
    assert_eq!(c.fetch_offsets("g").await.unwrap(), committed);
    assert_eq!(load(&c, "g").await.unwrap(), Some(vec![9]));
    assert_eq!(c.list_groups().await.unwrap(), vec!["g"]);
}

fn is_fenced<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(CoordinatorError::Fenced(_)))
}

/// Saves are compare-and-set on the version: a writer with a stale version is refused and
/// changes nothing; versions are positive and never repeat, not even after the group was deleted
/// and created again (so a broker that read a group before its deletion cannot write the new one).
async fn group_saves_are_compare_and_set(c: Arc<dyn Coordinator>) {
    assert!(
        is_fenced(c.save_group("g", 5, vec![1]).await),
        "no blob: only 0"
    );
    let v1 = c.save_group("g", 0, vec![1]).await.unwrap();
    assert!(v1 > 0);
    // Two brokers that both read "no blob": only the first save wins.
    assert!(is_fenced(c.save_group("g", 0, vec![2]).await));
    let v2 = c.save_group("g", v1, vec![3]).await.unwrap();
    assert!(v2 > v1);
    // A broker still holding v1 is refused; the blob stays the winner's.
    assert!(is_fenced(c.save_group("g", v1, vec![4]).await));
    let loaded = c.load_group("g").await.unwrap().unwrap();
    assert_eq!(
        loaded,
        StoredGroup {
            state: vec![3],
            version: v2,
            saved_ms: loaded.saved_ms,
        }
    );
    // Versions are unique across groups.
    let h = c.save_group("h", 0, vec![]).await.unwrap();
    assert!(h != v1 && h != v2);
    // Deleted and created again: the old version means nothing.
    assert!(c.delete_group("g", Some(v2)).await.unwrap());
    assert!(is_fenced(c.save_group("g", v2, vec![5]).await));
    let v3 = c.save_group("g", 0, vec![6]).await.unwrap();
    assert!(v3 > v2 && v3 > h);
    // A fenced deletion deletes nothing.
    assert!(is_fenced(c.delete_group("g", Some(v2)).await));
    assert_eq!(load(&c, "g").await.unwrap(), Some(vec![6]));
}

/// Offset writes can be made conditional on the group's version: the broker that validated a
/// commit under one generation of a group cannot land it after another broker (or itself) saved
/// a newer one.
async fn offset_writes_are_fenced_by_the_group_version(c: Arc<dyn Coordinator>) {
    // No blob yet: version 0.
    c.commit_offsets("g", vec![offset("t", 0, 10)], Some(0))
        .await
        .unwrap();
    let v1 = c.save_group("g", 0, vec![1]).await.unwrap();
    assert!(is_fenced(
        c.commit_offsets("g", vec![offset("t", 0, 5)], Some(0))
            .await
    ));
    c.commit_offsets("g", vec![offset("t", 0, 20)], Some(v1))
        .await
        .unwrap();
    let v2 = c.save_group("g", v1, vec![2]).await.unwrap();
    // A commit validated under v1 lands after v2: refused, the offset does not go backwards.
    assert!(is_fenced(
        c.commit_offsets("g", vec![offset("t", 0, 15)], Some(v1))
            .await
    ));
    // Even an empty fenced commit reports the fence.
    assert!(is_fenced(c.commit_offsets("g", vec![], Some(v1)).await));
    assert!(is_fenced(
        c.delete_offsets("g", vec![("t".into(), 0)], Some(v1)).await
    ));
    assert_eq!(
        c.fetch_offsets("g").await.unwrap(),
        vec![offset("t", 0, 20)]
    );
    c.delete_offsets("g", vec![("t".into(), 0)], Some(v2))
        .await
        .unwrap();
    assert!(c.fetch_offsets("g").await.unwrap().is_empty());
    // Unfenced writes always land.
    c.commit_offsets("g", vec![offset("t", 1, 1)], None)
        .await
        .unwrap();
    assert_eq!(c.fetch_offsets("g").await.unwrap(), vec![offset("t", 1, 1)]);
}

async fn group_exists_without_listing(c: Arc<dyn Coordinator>) {
    assert!(!c.group_exists("g").await.unwrap());
    c.commit_offsets("g", vec![offset("t", 0, 1)], None)
        .await
        .unwrap();
    assert!(c.group_exists("g").await.unwrap());
    c.save_group("h", 0, vec![]).await.unwrap();
    assert!(c.group_exists("h").await.unwrap());
    assert!(!c.group_exists("g2").await.unwrap());
    c.delete_group("g", None).await.unwrap();
    assert!(!c.group_exists("g").await.unwrap());
    assert!(is_invalid(c.group_exists("").await));
}
