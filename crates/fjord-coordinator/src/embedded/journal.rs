//! The embedded coordinator's files: a snapshot and an append-only journal.
//!
//! - `snapshot.json`: the whole [`State`] after entry number `seq`, replaced atomically
//!   (write a temp file, fsync, rename, fsync the directory).
//! - `journal.log`: entries after the snapshot, each framed as
//!   `[u32 length][u32 crc32c][u64 seq][JSON entry]` (lengths and sequence big-endian; the CRC
//!   covers the sequence and the JSON). An entry is durable once `append` returns: the file is
//!   fsynced first.
//!
//! Recovery reads the snapshot, then replays journal entries with `seq` greater than the
//! snapshot's. A torn or corrupt tail (a crash mid-append) ends the replay and is cut off: it was
//! never acknowledged, since acknowledgement waits for the fsync.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{Entry, State};
use crate::{CoordinatorError, Result};

const SNAPSHOT: &str = "snapshot.json";
const JOURNAL: &str = "journal.log";
const FRAME_HEADER: usize = 16;
/// Upper bound on one entry, far above any real one; a larger length means corruption.
const MAX_ENTRY_BYTES: usize = 256 << 20;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    seq: u64,
    state: State,
}

/// An open journal, positioned at its end.
pub struct Journal {
    dir: PathBuf,
    file: File,
    /// Sequence number of the last entry written or replayed.
    seq: u64,
    /// Bytes in the journal file.
    len: u64,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> CoordinatorError {
    CoordinatorError::Storage(format!("{what} {}: {e}", path.display()))
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` and rebuilds the state it records.
    pub fn open(dir: &Path) -> Result<(Journal, State)> {
        create_dir_durably(dir)?;
        let snapshot_path = dir.join(SNAPSHOT);
        let (mut seq, mut state) = match File::open(&snapshot_path) {
            Ok(file) => {
                let snapshot: Snapshot =
                    serde_json::from_reader(BufReader::new(file)).map_err(|e| {
                        CoordinatorError::Corrupt(format!("{}: {e}", snapshot_path.display()))
                    })?;
                if snapshot.format != 1 {
                    return Err(CoordinatorError::Corrupt(format!(
                        "{}: unknown snapshot format {}",
                        snapshot_path.display(),
                        snapshot.format
                    )));
                }
                (snapshot.seq, snapshot.state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, State::default()),
            Err(e) => return Err(io_err("opening", &snapshot_path, e)),
        };

        let journal_path = dir.join(JOURNAL);
        let existed = journal_path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&journal_path)
            .map_err(|e| io_err("opening", &journal_path, e))?;
        if !existed {
            // The new file's directory entry must be on disk before any entry appended to it is
            // acknowledged: fsyncing the file alone does not persist its name.
            sync_dir(dir)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io_err("reading", &journal_path, e))?;

        let mut pos = 0usize;
        let mut replayed = 0u64;
        while let Frame::Entry(entry_seq, entry, next) = read_frame(&bytes, pos)? {
            if entry_seq > seq {
                if entry_seq != seq + 1 {
                    return Err(CoordinatorError::Corrupt(format!(
                        "{}: entry {entry_seq} follows {seq}",
                        journal_path.display()
                    )));
                }
                state.apply(&entry);
                seq = entry_seq;
                replayed += 1;
            }
            pos = next;
        }
        if pos < bytes.len() {
            tracing::warn!(
                path = %journal_path.display(),
                valid = pos,
                total = bytes.len(),
                "cutting off a torn journal tail (an entry never acknowledged)"
            );
            file.set_len(pos as u64)
                .map_err(|e| io_err("truncating", &journal_path, e))?;
            file.sync_all()
                .map_err(|e| io_err("syncing", &journal_path, e))?;
        }
        tracing::info!(seq, replayed, "embedded coordinator state recovered");
        Ok((
            Journal {
                dir: dir.to_path_buf(),
                file,
                seq,
                len: pos as u64,
            },
            state,
        ))
    }

    /// Appends one entry and makes it durable. An entry too large to replay is refused with
    /// [`CoordinatorError::Invalid`] before anything is written.
    pub fn append(&mut self, entry: &Entry) -> Result<()> {
        self.append_all(std::slice::from_ref(entry))
    }

    /// Appends entries in order and makes them durable with one sync (group commit). If any
    /// entry is too large to replay, none is written ([`CoordinatorError::Invalid`]).
    pub fn append_all(&mut self, entries: &[Entry]) -> Result<()> {
        let mut frames = Vec::new();
        let mut seq = self.seq;
        for entry in entries {
            let json = serde_json::to_vec(entry)
                .map_err(|e| CoordinatorError::Storage(format!("encoding journal entry: {e}")))?;
            if json.len() + 8 > MAX_ENTRY_BYTES {
                // Recovery would take a longer frame for a torn tail and cut it off, with
                // everything after it: refuse it before writing anything.
                return Err(CoordinatorError::Invalid(format!(
                    "a change of {} bytes is too large for the journal (at most {MAX_ENTRY_BYTES})",
                    json.len()
                )));
            }
            seq += 1;
            frames.reserve(FRAME_HEADER + json.len());
            frames.extend_from_slice(&((json.len() + 8) as u32).to_be_bytes());
            let mut crc = crc32c::crc32c(&seq.to_be_bytes());
            crc = crc32c::crc32c_append(crc, &json);
            frames.extend_from_slice(&crc.to_be_bytes());
            frames.extend_from_slice(&seq.to_be_bytes());
            frames.extend_from_slice(&json);
        }
        if frames.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(JOURNAL);
        self.file
            .write_all(&frames)
            .map_err(|e| io_err("appending to", &path, e))?;
        self.file
            .sync_data()
            .map_err(|e| io_err("syncing", &path, e))?;
        self.seq = seq;
        self.len += frames.len() as u64;
        Ok(())
    }

    /// Bytes in the journal since the last snapshot.
    pub fn size_bytes(&self) -> u64 {
        self.len
    }

    /// Writes a snapshot of `state` (which must include every appended entry) and empties the
    /// journal.
    pub fn snapshot(&mut self, state: &State) -> Result<()> {
        let tmp = self.dir.join("snapshot.json.tmp");
        let path = self.dir.join(SNAPSHOT);
        {
            let mut file = File::create(&tmp).map_err(|e| io_err("creating", &tmp, e))?;
            let snapshot = Snapshot {
                format: 1,
                seq: self.seq,
                state: state.clone(),
            };
            serde_json::to_writer(&mut file, &snapshot)
                .map_err(|e| CoordinatorError::Storage(format!("writing snapshot: {e}")))?;
            file.sync_all().map_err(|e| io_err("syncing", &tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| io_err("renaming", &tmp, e))?;
        sync_dir(&self.dir)?;
        // Entries up to `seq` are in the snapshot; replay skips them even if truncation is lost.
        let journal_path = self.dir.join(JOURNAL);
        self.file
            .set_len(0)
            .map_err(|e| io_err("truncating", &journal_path, e))?;
        self.file
            .sync_all()
            .map_err(|e| io_err("syncing", &journal_path, e))?;
        self.len = 0;
        Ok(())
    }
}

/// Creates `dir` and any missing parents, fsyncing the parent of each directory created, so that
/// the directories survive a power loss once this returns.
fn create_dir_durably(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && !at.exists() {
        missing.push(at);
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(test)]
    tests::SYNCED_DIRS.with(|synced| synced.borrow_mut().push(dir.to_path_buf()));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing directory", dir, e))
}

/// What is found at a position of the journal.
enum Frame {
    /// A whole entry: its sequence number, the entry and the position after it.
    Entry(u64, Entry, usize),
    /// The end, or a frame cut short by a crash mid-append (never acknowledged).
    End,
}

/// Reads the frame at `pos`. Only the last frame may be damaged (a crash during its append);
/// damage before the end, or a whole frame whose entry this build cannot decode (written by a
/// newer version), is corruption and refuses recovery rather than silently dropping entries.
fn read_frame(bytes: &[u8], pos: usize) -> Result<Frame> {
    let corrupt = |why: String| {
        Err(CoordinatorError::Corrupt(format!(
            "journal at byte {pos}: {why}"
        )))
    };
    let Some(header) = bytes.get(pos..pos + 8) else {
        return Ok(Frame::End);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let end = pos + 8 + len;
    let last = end >= bytes.len();
    if !(8..=MAX_ENTRY_BYTES).contains(&len) {
        return if last {
            Ok(Frame::End)
        } else {
            corrupt(format!("impossible length {len}"))
        };
    }
    let Some(body) = bytes.get(pos + 8..end) else {
        return Ok(Frame::End);
    };
    if crc32c::crc32c(body) != crc {
        return if last {
            Ok(Frame::End)
        } else {
            corrupt("checksum mismatch before the end".into())
        };
    }
    let seq = u64::from_be_bytes([
        body[0], body[1], body[2], body[3], body[4], body[5], body[6], body[7],
    ]);
    match serde_json::from_slice(&body[8..]) {
        Ok(entry) => Ok(Frame::Entry(seq, entry, end)),
        Err(e) => corrupt(format!(
            "entry {seq} is intact but cannot be read by this version ({e}); was the data dir written by a newer Fjord?"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TopicMeta;

    thread_local! {
        /// Directories this thread fsynced, in order (a test can see what reached the disk).
        pub(super) static SYNCED_DIRS: std::cell::RefCell<Vec<PathBuf>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }

    /// A new journal's directory entry (and its new directories) are made durable before the
    /// first entry is acknowledged: fsyncing the file alone does not persist its name.
    #[test]
    fn creating_a_journal_syncs_its_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data").join("coordinator");
        SYNCED_DIRS.with(|s| s.borrow_mut().clear());
        let (mut journal, _) = Journal::open(&dir).unwrap();
        journal.append(&topic("a")).unwrap();
        let synced = SYNCED_DIRS.with(|s| s.borrow().clone());
        for expected in [
            root.path().to_path_buf(),
            root.path().join("data"),
            dir.clone(),
        ] {
            assert!(
                synced.contains(&expected),
                "{} not synced; synced: {synced:?}",
                expected.display()
            );
        }
        drop(journal);
        // Reopening an existing journal creates nothing.
        SYNCED_DIRS.with(|s| s.borrow_mut().clear());
        Journal::open(&dir).unwrap();
        assert!(SYNCED_DIRS.with(|s| s.borrow().is_empty()));
    }

    fn topic(name: &str) -> Entry {
        Entry::CreateTopic(TopicMeta {
            name: name.into(),
            id: uuid::Uuid::new_v4(),
            partitions: 1,
            configs: Default::default(),
        })
    }

    #[test]
    fn torn_tail_is_cut_and_earlier_entries_survive() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut journal, _) = Journal::open(dir.path()).unwrap();
            journal.append(&topic("a")).unwrap();
            journal.append(&topic("b")).unwrap();
        }
        let path = dir.path().join(JOURNAL);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        let (mut journal, state) = Journal::open(dir.path()).unwrap();
        assert_eq!(state.topics.keys().collect::<Vec<_>>(), vec!["a"]);
        journal.append(&topic("c")).unwrap();
        drop(journal);
        let (_, state) = Journal::open(dir.path()).unwrap();
        assert_eq!(state.topics.keys().collect::<Vec<_>>(), vec!["a", "c"]);
    }

    #[test]
    fn damage_before_the_end_or_an_unknown_entry_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut journal, _) = Journal::open(dir.path()).unwrap();
            journal.append(&topic("a")).unwrap();
            journal.append(&topic("b")).unwrap();
        }
        let path = dir.path().join(JOURNAL);
        let good = std::fs::read(&path).unwrap();
        let mut bad = good.clone();
        bad[20] ^= 0xff; // inside the first entry, which is not the last
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(CoordinatorError::Corrupt(_))
        ));

        // An intact frame whose entry this build does not know.
        let mut unknown = good.clone();
        let json = br#"{"FromTheFuture":1}"#;
        let seq = 3u64;
        let mut crc = crc32c::crc32c(&seq.to_be_bytes());
        crc = crc32c::crc32c_append(crc, json);
        unknown.extend_from_slice(&((json.len() + 8) as u32).to_be_bytes());
        unknown.extend_from_slice(&crc.to_be_bytes());
        unknown.extend_from_slice(&seq.to_be_bytes());
        unknown.extend_from_slice(json);
        std::fs::write(&path, &unknown).unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(CoordinatorError::Corrupt(_))
        ));
        // The data is still there for a build that understands it.
        assert_eq!(std::fs::read(&path).unwrap(), unknown);
    }

    #[test]
    fn snapshot_then_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, mut state) = Journal::open(dir.path()).unwrap();
        for name in ["a", "b"] {
            let e = topic(name);
            journal.append(&e).unwrap();
            state.apply(&e);
        }
        journal.snapshot(&state).unwrap();
        let e = topic("c");
        journal.append(&e).unwrap();
        drop(journal);
        let (_, recovered) = Journal::open(dir.path()).unwrap();
        assert_eq!(recovered.topics.len(), 3);
    }

    #[test]
    fn groups_survive_snapshot_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, mut state) = Journal::open(dir.path()).unwrap();
        let blob: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let entries = [
            Entry::SaveGroup {
                group: "g".into(),
                state: blob.clone(),
                at_ms: 7,
            },
            Entry::CommitOffsets {
                group: "g".into(),
                offsets: vec![crate::CommittedOffset {
                    topic: "t".into(),
                    partition: 3,
                    offset: 42,
                    leader_epoch: 1,
                    metadata: None,
                    commit_timestamp_ms: 7,
                }],
            },
        ];
        journal.append(&entries[0]).unwrap();
        state.apply(&entries[0]);
        journal.snapshot(&state).unwrap();
        journal.append(&entries[1]).unwrap();
        state.apply(&entries[1]);
        drop(journal);
        let (_, recovered) = Journal::open(dir.path()).unwrap();
        assert_eq!(recovered, state);
        assert_eq!(recovered.groups["g"].state.as_ref(), Some(&blob));
    }
}
