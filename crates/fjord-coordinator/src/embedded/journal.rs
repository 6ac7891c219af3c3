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
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
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
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&journal_path)
            .map_err(|e| io_err("opening", &journal_path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io_err("reading", &journal_path, e))?;

        let mut pos = 0usize;
        let mut replayed = 0u64;
        while let Some((entry_seq, entry, next)) = read_frame(&bytes, pos) {
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

    /// Appends one entry and makes it durable.
    pub fn append(&mut self, entry: &Entry) -> Result<()> {
        let json = serde_json::to_vec(entry)
            .map_err(|e| CoordinatorError::Storage(format!("encoding journal entry: {e}")))?;
        let seq = self.seq + 1;
        let mut frame = Vec::with_capacity(FRAME_HEADER + json.len());
        frame.extend_from_slice(&((json.len() + 8) as u32).to_be_bytes());
        let mut crc = crc32c::crc32c(&seq.to_be_bytes());
        crc = crc32c::crc32c_append(crc, &json);
        frame.extend_from_slice(&crc.to_be_bytes());
        frame.extend_from_slice(&seq.to_be_bytes());
        frame.extend_from_slice(&json);
        let path = self.dir.join(JOURNAL);
        self.file
            .write_all(&frame)
            .map_err(|e| io_err("appending to", &path, e))?;
        self.file
            .sync_data()
            .map_err(|e| io_err("syncing", &path, e))?;
        self.seq = seq;
        self.len += frame.len() as u64;
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

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing directory", dir, e))
}

/// Reads the frame at `pos`: its sequence number, entry and the position after it; `None` at the
/// end or at a torn/corrupt frame.
fn read_frame(bytes: &[u8], pos: usize) -> Option<(u64, Entry, usize)> {
    let header = bytes.get(pos..pos + 8)?;
    let len = u32::from_be_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(header[4..8].try_into().ok()?);
    if !(8..=MAX_ENTRY_BYTES).contains(&len) {
        return None;
    }
    let body = bytes.get(pos + 8..pos + 8 + len)?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let seq = u64::from_be_bytes(body[0..8].try_into().ok()?);
    let entry = serde_json::from_slice(&body[8..]).ok()?;
    Some((seq, entry, pos + 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TopicMeta;

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
}
