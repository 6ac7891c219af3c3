//! The embedded coordinator's files: a snapshot and an append-only journal in segments.
//!
//! - `snapshot.json`: the whole [`State`] after entry number `seq`, replaced atomically
//!   (write a temp file, fsync, rename, fsync the directory).
//! - `journal-<first seq, 20 digits>.log`: journal segments, each framed as
//!   `[u32 length][u32 crc32c][u64 seq][JSON entry]` per entry (lengths and sequence
//!   big-endian; the CRC covers the sequence and the JSON). An entry is durable once `append`
//!   returns: the file is fsynced first. Only the last segment is appended to. A data dir from
//!   before segments has one `journal.log` instead, read as the first segment and appended to
//!   until the first snapshot retires it (an upgrade in place).
//!
//! Snapshots do not stop appends. [`Journal::rotate`] starts a new segment at `seq + 1`; the
//! state as of `seq` (an O(1) clone, see [`State`]) is then written by [`write_snapshot`] on
//! another thread, and only after the snapshot is durable are the older segments deleted
//! ([`remove_segments`]).
//!
//! Recovery reads the snapshot, then every segment in order, replaying the entries with a `seq`
//! greater than the snapshot's (so entries a snapshot already holds are skipped, whichever crash
//! window left them behind: a segment not yet deleted, a snapshot not yet renamed). Entries past
//! the snapshot must follow each other without a gap. A torn or corrupt tail of the last segment
//! (a crash mid-append) ends the replay and is cut off: it was never acknowledged, since
//! acknowledgement waits for the fsync; damage anywhere else refuses recovery. Segments wholly
//! covered by the snapshot are deleted once recovery is done.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{Entry, State};
use crate::{CoordinatorError, Result};

const SNAPSHOT: &str = "snapshot.json";
const SNAPSHOT_TMP: &str = "snapshot.json.tmp";
/// The single journal file of data dirs from before segments.
const LEGACY_JOURNAL: &str = "journal.log";
const FRAME_HEADER: usize = 16;
/// Upper bound on one entry, far above any real one; a larger length means corruption.
const MAX_ENTRY_BYTES: usize = 256 << 20;
/// Snapshot format written: 2 means "the journal is in segments" (the state's JSON is the same
/// as in format 1), so that a build that only knows `journal.log` refuses the dir instead of
/// silently missing entries.
const SNAPSHOT_FORMAT: u32 = 2;

#[derive(Deserialize)]
struct Snapshot {
    format: u32,
    seq: u64,
    state: State,
}

/// The snapshot as written: borrowing the state.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    format: u32,
    seq: u64,
    state: &'a State,
}

/// An open journal, positioned at the end of its last segment.
pub struct Journal {
    dir: PathBuf,
    /// The segment appended to.
    path: PathBuf,
    file: File,
    /// Sequence number of the last entry written or replayed.
    seq: u64,
    /// Bytes in the segment appended to.
    len: u64,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> CoordinatorError {
    CoordinatorError::Storage(format!("{what} {}: {e}", path.display()))
}

fn segment_name(first_seq: u64) -> String {
    format!("journal-{first_seq:020}.log")
}

/// The journal segments in `dir`, in order: the legacy `journal.log` first, then by first seq.
pub(super) fn segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    let listing = std::fs::read_dir(dir).map_err(|e| io_err("listing", dir, e))?;
    for item in listing {
        let item = item.map_err(|e| io_err("listing", dir, e))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let order = if name == LEGACY_JOURNAL {
            0
        } else if let Some(seq) = name
            .strip_prefix("journal-")
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|digits| digits.parse::<u64>().ok())
        {
            // Segments start at 1 or later; the legacy file sorts before them all.
            seq.saturating_add(1)
        } else {
            continue;
        };
        found.push((order, item.path()));
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` and rebuilds the state it records.
    pub fn open(dir: &Path) -> Result<(Journal, State)> {
        create_dir_durably(dir)?;
        let snapshot_path = dir.join(SNAPSHOT);
        let (snapshot_seq, mut state) = match File::open(&snapshot_path) {
            Ok(file) => {
                let snapshot: Snapshot =
                    serde_json::from_reader(BufReader::new(file)).map_err(|e| {
                        CoordinatorError::Corrupt(format!("{}: {e}", snapshot_path.display()))
                    })?;
                if !(1..=SNAPSHOT_FORMAT).contains(&snapshot.format) {
                    return Err(CoordinatorError::Corrupt(format!(
                        "{}: unknown snapshot format {}",
                        snapshot_path.display(),
                        snapshot.format
                    )));
                }
                let mut state = snapshot.state;
                state.rebuild_time_indexes();
                (snapshot.seq, state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, State::default()),
            Err(e) => return Err(io_err("opening", &snapshot_path, e)),
        };
        let mut seq = snapshot_seq;

        let mut paths = segments(dir)?;
        if paths.is_empty() {
            let path = dir.join(segment_name(seq + 1));
            File::create(&path).map_err(|e| io_err("creating", &path, e))?;
            // The new file's directory entry must be on disk before any entry appended to it is
            // acknowledged: fsyncing the file alone does not persist its name.
            sync_dir(dir)?;
            paths.push(path);
        }
        let last = paths.len() - 1;
        let mut replayed = 0u64;
        // Segments whose entries the snapshot holds all: deleted once recovery is done.
        let mut covered = Vec::new();
        let mut tail = None;
        for (i, path) in paths.iter().enumerate() {
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(path)
                .map_err(|e| io_err("opening", path, e))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|e| io_err("reading", path, e))?;
            let mut pos = 0usize;
            let mut newest = None;
            while let Frame::Entry(entry_seq, entry, next) = read_frame(&bytes, pos)
                .map_err(|e| CoordinatorError::Corrupt(format!("{}: {e}", path.display())))?
            {
                if entry_seq > seq {
                    if entry_seq != seq + 1 {
                        return Err(CoordinatorError::Corrupt(format!(
                            "{}: entry {entry_seq} follows {seq}",
                            path.display()
                        )));
                    }
                    state.apply(&entry);
                    seq = entry_seq;
                    replayed += 1;
                }
                newest = Some(entry_seq);
                pos = next;
            }
            if pos < bytes.len() {
                if i != last {
                    return Err(CoordinatorError::Corrupt(format!(
                        "{}: damaged at byte {pos}, and later segments follow it",
                        path.display()
                    )));
                }
                tracing::warn!(
                    path = %path.display(),
                    valid = pos,
                    total = bytes.len(),
                    "cutting off a torn journal tail (an entry never acknowledged)"
                );
                file.set_len(pos as u64)
                    .map_err(|e| io_err("truncating", path, e))?;
                file.sync_all().map_err(|e| io_err("syncing", path, e))?;
            }
            if i == last {
                tail = Some((file, pos as u64));
            } else if newest.is_none_or(|newest| newest <= snapshot_seq) {
                covered.push(path.clone());
            }
        }
        let (file, len) = tail.ok_or_else(|| {
            CoordinatorError::Storage(format!("no journal segment in {}", dir.display()))
        })?;
        remove_segments(dir, &covered)?;
        tracing::info!(seq, replayed, "embedded coordinator state recovered");
        Ok((
            Journal {
                dir: dir.to_path_buf(),
                path: paths[last].clone(),
                file,
                seq,
                len,
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
        self.file
            .write_all(&frames)
            .map_err(|e| io_err("appending to", &self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| io_err("syncing", &self.path, e))?;
        self.seq = seq;
        self.len += frames.len() as u64;
        Ok(())
    }

    /// Bytes in the segment appended to.
    pub fn size_bytes(&self) -> u64 {
        self.len
    }

    /// The directory of the journal's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sequence number of the last entry appended (or replayed).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Starts a new segment at `seq + 1` and appends there from now on. Returns the older
    /// segments: once a snapshot as of [`seq`](Self::seq) is durable ([`write_snapshot`]), they
    /// hold nothing recovery needs ([`remove_segments`]). On an error nothing changed (appends go
    /// on to the current segment).
    pub fn rotate(&mut self) -> Result<Vec<PathBuf>> {
        let path = self.dir.join(segment_name(self.seq + 1));
        let older: Vec<PathBuf> = segments(&self.dir)?
            .into_iter()
            .filter(|p| *p != path)
            .collect();
        let created = File::create(&path)
            .map_err(|e| io_err("creating", &path, e))
            .and_then(|file| {
                sync_dir(&self.dir)?;
                Ok(file)
            });
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                // An empty segment left behind is harmless: recovery reads segments in order
                // and checks entries by sequence number.
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        self.path = path;
        self.file = file;
        self.len = 0;
        Ok(older)
    }

    /// Writes a snapshot of `state` (which must include every appended entry) and deletes the
    /// older segments, all on the calling thread. Tests use it; the coordinator snapshots in the
    /// background ([`rotate`](Self::rotate), [`write_snapshot`], [`remove_segments`]).
    pub fn snapshot(&mut self, state: &State) -> Result<()> {
        let older = self.rotate()?;
        write_snapshot(&self.dir, self.seq, state)?;
        remove_segments(&self.dir, &older)
    }
}

/// Writes `state`, the state after entry `seq`, as the snapshot of `dir`, atomically and
/// durably. Safe to run while the journal appends (to a segment started after `seq`).
pub fn write_snapshot(dir: &Path, seq: u64, state: &State) -> Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP);
    let path = dir.join(SNAPSHOT);
    {
        let file = File::create(&tmp).map_err(|e| io_err("creating", &tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let snapshot = SnapshotRef {
            format: SNAPSHOT_FORMAT,
            seq,
            state,
        };
        serde_json::to_writer(&mut out, &snapshot)
            .map_err(|e| CoordinatorError::Storage(format!("writing snapshot: {e}")))?;
        let file = out
            .into_inner()
            .map_err(|e| io_err("writing", &tmp, e.into_error()))?;
        file.sync_all().map_err(|e| io_err("syncing", &tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| io_err("renaming", &tmp, e))?;
    sync_dir(dir)
}

/// Deletes journal segments a durable snapshot covers (a segment already gone is fine).
pub fn remove_segments(dir: &Path, paths: &[PathBuf]) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("deleting", path, e)),
        }
    }
    sync_dir(dir)
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

    /// The one journal segment in `dir`.
    fn only_segment(dir: &Path) -> PathBuf {
        let found = segments(dir).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        found[0].clone()
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
        let path = only_segment(dir.path());
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
        let path = only_segment(dir.path());
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

    fn names(state: &State) -> Vec<String> {
        state.topics.keys().cloned().collect()
    }

    /// A journal with topics a and b in its first segment, rotated, and c in the second; the
    /// state as of b (what a snapshot started at the rotation holds) and the older segments.
    fn rotated(dir: &Path) -> (Journal, State, u64, Vec<PathBuf>) {
        let (mut journal, mut state) = Journal::open(dir).unwrap();
        for name in ["a", "b"] {
            let e = topic(name);
            journal.append(&e).unwrap();
            state.apply(&e);
        }
        let at_rotation = state.clone();
        let older = journal.rotate().unwrap();
        let seq = journal.seq();
        journal.append(&topic("c")).unwrap();
        (journal, at_rotation, seq, older)
    }

    /// Crash after the rotation, before the snapshot was written (or while it was, leaving a
    /// partial temp file): both segments are replayed.
    #[test]
    fn crash_before_the_snapshot_replays_every_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _, _, older) = rotated(dir.path());
        drop(journal);
        std::fs::write(
            dir.path().join(SNAPSHOT_TMP),
            b"{\"format\":2,\"seq\":2,\"sta",
        )
        .unwrap();
        let (_, state) = Journal::open(dir.path()).unwrap();
        assert_eq!(names(&state), ["a", "b", "c"]);
        assert!(older.iter().all(|p| p.exists()), "no snapshot covers them");
        assert_eq!(segments(dir.path()).unwrap().len(), 2);
    }

    /// Crash after the snapshot was renamed into place, before the older segments were deleted:
    /// their entries are skipped by sequence number, and recovery deletes them.
    #[test]
    fn crash_after_the_snapshot_skips_and_deletes_covered_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, at_rotation, seq, older) = rotated(dir.path());
        write_snapshot(dir.path(), seq, &at_rotation).unwrap();
        journal.append(&topic("d")).unwrap();
        drop(journal);
        let (mut journal, state) = Journal::open(dir.path()).unwrap();
        assert_eq!(names(&state), ["a", "b", "c", "d"]);
        assert!(
            older.iter().all(|p| !p.exists()),
            "covered segments are deleted"
        );
        journal.append(&topic("e")).unwrap();
        drop(journal);
        let (_, state) = Journal::open(dir.path()).unwrap();
        assert_eq!(names(&state), ["a", "b", "c", "d", "e"]);
    }

    /// Crash half way through deleting covered segments: the ones left are skipped.
    #[test]
    fn crash_while_deleting_covered_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, mut state) = Journal::open(dir.path()).unwrap();
        for name in ["a", "b", "c"] {
            let e = topic(name);
            journal.append(&e).unwrap();
            state.apply(&e);
            journal.rotate().unwrap();
        }
        // Four segments: a, b, c, and the empty current one.
        let all = segments(dir.path()).unwrap();
        assert_eq!(all.len(), 4);
        write_snapshot(dir.path(), journal.seq(), &state).unwrap();
        std::fs::remove_file(&all[1]).unwrap();
        journal.append(&topic("d")).unwrap();
        drop(journal);
        let (_, recovered) = Journal::open(dir.path()).unwrap();
        assert_eq!(names(&recovered), ["a", "b", "c", "d"]);
        assert_eq!(segments(dir.path()).unwrap(), vec![all[3].clone()]);
    }

    /// A segment missing that no snapshot covers is a gap in the entries: recovery refuses.
    #[test]
    fn a_missing_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _, _, older) = rotated(dir.path());
        journal.rotate().unwrap();
        journal.append(&topic("d")).unwrap();
        drop(journal);
        let all = segments(dir.path()).unwrap();
        assert_eq!(all[0], older[0]);
        std::fs::remove_file(&all[1]).unwrap(); // holds c
        assert!(matches!(
            Journal::open(dir.path()),
            Err(CoordinatorError::Corrupt(_))
        ));
    }

    /// A torn tail in a segment that is not the last is damage, not a crash mid-append.
    #[test]
    fn a_torn_segment_before_the_last_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _, _, older) = rotated(dir.path());
        drop(journal);
        let full = std::fs::read(&older[0]).unwrap();
        std::fs::write(&older[0], &full[..full.len() - 3]).unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(CoordinatorError::Corrupt(_))
        ));
    }

    /// Security entries (credentials, ACLs and the ACL version) survive replay from the journal,
    /// and a snapshot of them, and entries after it.
    #[test]
    fn security_survives_replay_and_snapshots() {
        use crate::security::*;
        use crate::security_state::SecurityEntry;
        let binding = |name: &str| AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern_type: PatternType::Literal,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: AclOperation::Read,
            permission: AclPermission::Allow,
        };
        let entries = [
            SecurityEntry::UpsertCredential {
                user: "alice".into(),
                credential: ScramCredential {
                    mechanism: ScramMechanism::Sha512,
                    iterations: 4096,
                    salt: vec![1, 2, 3],
                    stored_key: vec![4; 64],
                    server_key: vec![5; 64],
                },
            },
            SecurityEntry::CreateAcls(vec![binding("a"), binding("b")]),
            SecurityEntry::DeleteAcls(vec![binding("a")]),
        ];
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, mut state) = Journal::open(dir.path()).unwrap();
        for e in entries {
            let e = Entry::Security(e);
            journal.append(&e).unwrap();
            state.apply(&e);
        }
        assert_eq!(state.security.acl_version, 2);
        drop(journal);
        let (mut journal, replayed) = Journal::open(dir.path()).unwrap();
        assert_eq!(replayed, state);
        journal.snapshot(&state).unwrap();
        let e = Entry::Security(SecurityEntry::CreateAcls(vec![binding("c")]));
        journal.append(&e).unwrap();
        state.apply(&e);
        drop(journal);
        let (_, reopened) = Journal::open(dir.path()).unwrap();
        assert_eq!(reopened, state);
        assert_eq!(reopened.security.acl_version, 3);
        assert_eq!(reopened.security.acls.len(), 2);
    }

    /// One frame as journal.log and segments hold it.
    fn frame(seq: u64, entry: &Entry) -> Vec<u8> {
        let json = serde_json::to_vec(entry).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&((json.len() + 8) as u32).to_be_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&seq.to_be_bytes()), &json);
        out.extend_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&json);
        out
    }

    /// A data dir from before segments (a format 1 snapshot and journal.log, which may still
    /// hold entries the snapshot has when its truncation was lost) opens, goes on appending to
    /// journal.log, and moves to segments at its first snapshot.
    #[test]
    fn a_data_dir_from_before_segments_opens_and_upgrades() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = State::default();
        old.apply(&topic("a"));
        let snapshot = serde_json::json!({ "format": 1, "seq": 1, "state": old });
        std::fs::write(dir.path().join(SNAPSHOT), snapshot.to_string()).unwrap();
        let mut legacy = frame(1, &topic("a"));
        legacy.extend(frame(2, &topic("b")));
        std::fs::write(dir.path().join(LEGACY_JOURNAL), &legacy).unwrap();

        let (mut journal, mut state) = Journal::open(dir.path()).unwrap();
        assert_eq!(names(&state), ["a", "b"]);
        let e = topic("c");
        journal.append(&e).unwrap();
        state.apply(&e);
        drop(journal);
        assert_eq!(
            segments(dir.path()).unwrap(),
            vec![dir.path().join(LEGACY_JOURNAL)]
        );

        let (mut journal, reopened) = Journal::open(dir.path()).unwrap();
        assert_eq!(reopened, state);
        journal.snapshot(&state).unwrap();
        journal.append(&topic("d")).unwrap();
        drop(journal);
        assert!(!dir.path().join(LEGACY_JOURNAL).exists());
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(SNAPSHOT)).unwrap()).unwrap();
        assert_eq!(written["format"], 2);
        assert_eq!(written["seq"], 3);
        let (_, state) = Journal::open(dir.path()).unwrap();
        assert_eq!(names(&state), ["a", "b", "c", "d"]);
    }
}
