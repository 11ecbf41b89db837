//! Savepoints: self-contained, versioned, portable copies of a pipeline's state, organised by
//! key group, restorable into another directory or machine and with another number of key
//! groups or partitions.
//!
//! ```text
//! <savepoint>/
//!   savepoint.json        format, pipeline, key groups, positions, plugin version, states,
//!                         broadcast maps, and every data file with its SHA-256 (written last)
//!   keyed/kg-00042.bin    the live entries of key group 42
//!   broadcast.bin         the broadcast maps
//! ```
//!
//! A data file starts with `EDDYSP1\n`, then records. Keyed record: `state: u32 BE` (index into
//! `states`), `key_len: u32 BE`, key, `has_map_key: u8`, [`map_key_len: u32 BE`, map key],
//! `value_len: u32 BE`, value as stored (timestamp header included, see `state::layout`).
//! Broadcast record: `map: u32 BE` (index into `maps`), `key_len: u32 BE`, key,
//! `value_len: u32 BE`, value.
//!
//! Writing a savepoint is a full snapshot, so expired entries are left out (Flink's "cleanup in
//! full snapshot"): restored state never brings back what had expired. Restoring re-hashes every
//! key into the new key group count and keeps only the key groups of the partitions the host
//! owns.

pub mod bulk;

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::{Cut, now_ms, sha256_file, write_atomically};
use crate::files::Hashing;
use eddy_state::layout::{
    PREFIX_LEN, decode_list, decode_value_ttl, key_group_of, push_list_element, state_id_of,
};
use eddy_state::{StateKind, StateStore, Ttl};

/// Version of the savepoint format this host writes; it reads this and older ones.
pub const SAVEPOINT_FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"EDDYSP1\n";

/// A state as recorded in a savepoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedState {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: StateKind,
    /// Its TTL when the savepoint was taken.
    pub ttl: Option<Ttl>,
}

/// One data file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedFile {
    /// Path inside the savepoint.
    pub path: String,
    /// The key group it holds (none for broadcast state).
    pub key_group: Option<u32>,
    /// Entries in it.
    pub entries: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// `savepoint.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavepointMeta {
    /// Format version.
    pub format: u32,
    /// The pipeline it was taken from.
    pub pipeline: String,
    /// When, ms since the Unix epoch.
    pub created_ms: u64,
    /// Key groups of the state it was taken from.
    pub key_groups: u32,
    /// Positions and plugin version at the cut.
    #[serde(flatten)]
    pub cut: Cut,
    /// Keyed states, indexed by the records' `state`.
    pub states: Vec<SavedState>,
    /// Broadcast maps, indexed by the records' `map`.
    pub maps: Vec<String>,
    /// Data files.
    pub files: Vec<SavedFile>,
    /// Live entries written.
    pub entries: u64,
    /// Expired entries left out.
    pub expired_skipped: u64,
}

/// Progress of writing or restoring: files done of all.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Files done.
    pub done: usize,
    /// Files in all (for writing: key groups in all).
    pub total: usize,
    /// Entries so far.
    pub entries: u64,
}

struct FileWriter {
    out: BufWriter<Hashing<std::fs::File>>,
    path: String,
    key_group: Option<u32>,
    entries: u64,
}

impl FileWriter {
    fn create(dir: &Path, path: String, key_group: Option<u32>) -> anyhow::Result<FileWriter> {
        let full = dir.join(&path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = BufWriter::new(Hashing::new(std::fs::File::create(&full)?));
        out.write_all(MAGIC)?;
        Ok(FileWriter {
            out,
            path,
            key_group,
            entries: 0,
        })
    }

    fn bytes(&mut self, b: &[u8]) -> anyhow::Result<()> {
        self.out.write_all(&(b.len() as u32).to_be_bytes())?;
        self.out.write_all(b)?;
        Ok(())
    }

    fn finish(self, dir: &Path) -> anyhow::Result<SavedFile> {
        let (file, sha256) = self.out.into_inner().map_err(|e| e.into_error())?.finish();
        file.sync_all()?;
        let full = dir.join(&self.path);
        Ok(SavedFile {
            bytes: std::fs::metadata(&full)?.len(),
            sha256,
            path: self.path,
            key_group: self.key_group,
            entries: self.entries,
        })
    }
}

/// Writes a savepoint of `store` (a checkpoint opened read-only, so nothing moves under it)
/// into `dir`, which must not exist yet.
pub fn write(
    store: &StateStore,
    cut: &Cut,
    pipeline: &str,
    dir: &Path,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<SavepointMeta> {
    if dir.exists() {
        bail!(
            "{} exists already; choose another savepoint name or delete it",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the savepoint directory {}; choose a directory this host can write",
            dir.display()
        )
    })?;
    let states = store.states();
    let index: std::collections::HashMap<u32, usize> =
        states.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let now = store.now_ms();
    let mut files = Vec::new();
    let (mut entries, mut expired) = (0u64, 0u64);
    let total = store.key_groups() as usize;
    let mut current: Option<FileWriter> = None;
    store.settle()?;
    let mut it = store.db().raw_iterator_cf(store.keyed_cf());
    it.seek_to_first();
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        let (Some(kg), Some(id)) = (key_group_of(k), state_id_of(k)) else {
            it.next();
            continue;
        };
        let Some(&si) = index.get(&id) else {
            it.next();
            continue;
        };
        let state = &states[si];
        let Some(value) = live_value(state.kind, state.ttl, v, now) else {
            expired += 1;
            it.next();
            continue;
        };
        if current
            .as_ref()
            .is_none_or(|w| w.key_group != Some(kg as u32))
        {
            if let Some(w) = current.take() {
                files.push(w.finish(dir)?);
                progress(Progress {
                    done: kg as usize,
                    total,
                    entries,
                });
            }
            current = Some(FileWriter::create(
                dir,
                format!("keyed/kg-{kg:05}.bin"),
                Some(kg as u32),
            )?);
        }
        let w = current.as_mut().context("writer open")?;
        let rest = &k[PREFIX_LEN - 4..];
        let key_len = u32::from_be_bytes(rest[..4].try_into()?) as usize;
        let (key, map_key) = rest[4..].split_at(key_len);
        w.out.write_all(&(si as u32).to_be_bytes())?;
        w.bytes(key)?;
        if state.kind == StateKind::Map {
            w.out.write_all(&[1])?;
            w.bytes(map_key)?;
        } else {
            w.out.write_all(&[0])?;
        }
        w.bytes(&value)?;
        w.entries += 1;
        entries += 1;
        it.next();
    }
    it.status()?;
    if let Some(w) = current.take() {
        files.push(w.finish(dir)?);
    }
    // Broadcast maps.
    let maps = store.broadcast_maps();
    let map_index: std::collections::HashMap<u32, usize> = maps
        .iter()
        .enumerate()
        .map(|(i, (_, id))| (*id, i))
        .collect();
    let mut w = FileWriter::create(dir, "broadcast.bin".into(), None)?;
    let mut it = store.db().raw_iterator_cf(store.broadcast_cf());
    it.seek_to_first();
    while it.valid() {
        if let (Some(k), Some(v)) = (it.key(), it.value())
            && let Some((map, key)) = eddy_state::broadcast::split_key(k)
            && let Some(&mi) = map_index.get(&map)
        {
            w.out.write_all(&(mi as u32).to_be_bytes())?;
            w.bytes(key)?;
            w.bytes(v)?;
            w.entries += 1;
            entries += 1;
        }
        it.next();
    }
    it.status()?;
    files.push(w.finish(dir)?);
    progress(Progress {
        done: total,
        total,
        entries,
    });
    let meta = SavepointMeta {
        format: SAVEPOINT_FORMAT,
        pipeline: pipeline.to_string(),
        created_ms: now_ms(),
        key_groups: store.key_groups(),
        cut: cut.clone(),
        states: states
            .iter()
            .map(|s| SavedState {
                name: s.name.clone(),
                kind: s.kind,
                ttl: s.ttl,
            })
            .collect(),
        maps: maps.into_iter().map(|(n, _)| n).collect(),
        files,
        entries,
        expired_skipped: expired,
    };
    write_atomically(
        &dir.join("savepoint.json"),
        &serde_json::to_vec_pretty(&meta)?,
    )?;
    Ok(meta)
}

/// The stored bytes to save for an entry, with expired list elements removed; `None` if the
/// entry is expired altogether.
fn live_value(kind: StateKind, ttl: Option<Ttl>, stored: &[u8], now: u64) -> Option<Vec<u8>> {
    match kind {
        StateKind::List => {
            let elements = decode_list(stored)?;
            let Some(ttl) = ttl else {
                return Some(stored.to_vec());
            };
            let mut out = Vec::with_capacity(stored.len());
            for (ts, v) in elements {
                if !ttl.is_expired(ts, now) {
                    push_list_element(&mut out, ts, v);
                }
            }
            (!out.is_empty()).then_some(out)
        }
        StateKind::Value | StateKind::Map => {
            let (ts, own, _) = decode_value_ttl(stored)?;
            let ttl_ms = own.or(ttl.map(|t| t.ttl_ms));
            match ttl_ms {
                Some(ms) if ts.saturating_add(ms) <= now => None,
                _ => Some(stored.to_vec()),
            }
        }
    }
}

/// Reads and checks `savepoint.json`.
pub fn read_meta(dir: &Path) -> anyhow::Result<SavepointMeta> {
    let path = dir.join("savepoint.json");
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "{} is not a savepoint (no savepoint.json); savepoints are written by `eddy savepoint create`",
            dir.display()
        )
    })?;
    let meta: SavepointMeta = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: savepoint.json is not valid", dir.display()))?;
    if meta.format > SAVEPOINT_FORMAT {
        bail!(
            "savepoint {} has format {}, this host reads up to {SAVEPOINT_FORMAT}: upgrade the host",
            dir.display(),
            meta.format
        );
    }
    if let Some(f) = meta
        .files
        .iter()
        .find(|f| !crate::within(&f.path, usize::MAX))
    {
        bail!(
            "savepoint {} names a file outside itself ({:?}): savepoint.json was written by something other than Eddy, or tampered with",
            dir.display(),
            f.path
        );
    }
    Ok(meta)
}

struct Reader {
    input: BufReader<std::fs::File>,
}

impl Reader {
    fn open(path: &Path) -> anyhow::Result<Reader> {
        let mut input = BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
        );
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            bail!("{} is not a savepoint data file", path.display());
        }
        Ok(Reader { input })
    }

    /// A u32, or None at the end of the file.
    fn u32_or_end(&mut self) -> anyhow::Result<Option<u32>> {
        let mut b = [0u8; 4];
        match self.input.read_exact(&mut b) {
            Ok(()) => Ok(Some(u32::from_be_bytes(b))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn u8(&mut self) -> anyhow::Result<u8> {
        let mut b = [0u8; 1];
        self.input.read_exact(&mut b)?;
        Ok(b[0])
    }

    fn bytes(&mut self) -> anyhow::Result<Vec<u8>> {
        let len = self.u32_or_end()?.context("truncated record")? as usize;
        let mut v = vec![0u8; len];
        self.input.read_exact(&mut v)?;
        Ok(v)
    }
}

/// Restores the savepoint in `dir` into `target` (fresh state, with any number of key groups),
/// keeping the key groups for which `owns` is true. Every data file is checked against its
/// checksum first. The savepoint's positions are written into the state. Files are checked
/// and read on every core, a file per thread at a time, each into a sorted SST file, and the
/// SST files are ingested together at the end (`eddy_state::ingest`): no entry passes through
/// a memtable, so none is flushed or compacted again, and the process keeps no memtable
/// memory from the restore.
pub fn restore(
    dir: &Path,
    target: &StateStore,
    owns: impl Fn(u16) -> bool + Sync,
    progress: impl FnMut(Progress) + Send,
) -> anyhow::Result<SavepointMeta> {
    let meta = read_meta(dir)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    crate::files::in_parallel(&meta.files, threads, |f| {
        let sum = sha256_file(&dir.join(&f.path))?;
        if sum != f.sha256 {
            bail!(
                "savepoint {}: {} fails its checksum; the savepoint is damaged",
                dir.display(),
                f.path
            );
        }
        Ok(())
    })?;
    let ids: Vec<(u32, StateKind)> = meta
        .states
        .iter()
        .map(|s| {
            target
                .open_state(&s.name, s.kind, s.ttl)
                .map(|i| (i.id, s.kind))
        })
        .collect::<Result<_, _>>()?;
    let maps: Vec<u32> = meta
        .maps
        .iter()
        .map(|m| target.open_broadcast_map(m))
        .collect::<Result<_, _>>()?;
    let total = meta.files.len();
    // Files done and entries so far, reported as each file ends.
    let done = std::sync::Mutex::new((0usize, 0u64, progress));
    // A file's entries go into SST files of up to this many entries and bytes: a savepoint's
    // file (one key group) is one SST file unless it is very large, and a thread holds no
    // more than this in memory.
    const CHUNK_ENTRIES: usize = 1_000_000;
    const CHUNK_BYTES: usize = 64 << 20;
    let ingest = target.ingest()?;
    crate::files::in_parallel(&meta.files, threads, |f| -> anyhow::Result<()> {
        let mut r = Reader::open(&dir.join(&f.path))?;
        let mut chunk: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut entries = 0u64;
        let broadcast = f.key_group.is_none();
        while let Some(index) = r.u32_or_end()? {
            if broadcast {
                let key = r.bytes()?;
                let value = r.bytes()?;
                let map = *maps.get(index as usize).context("record names no map")?;
                chunk.push((eddy_state::broadcast::entry_key(map, &key), value));
            } else {
                let key = r.bytes()?;
                let map_key = if r.u8()? == 1 { Some(r.bytes()?) } else { None };
                let value = r.bytes()?;
                let (id, _) = *ids.get(index as usize).context("record names no state")?;
                let kg = target.key_group(&key);
                if !owns(kg) {
                    continue;
                }
                let mut stored = eddy_state::layout::state_key(kg, id, &key);
                if let Some(mk) = map_key {
                    stored.extend_from_slice(&mk);
                }
                chunk.push((stored, value));
            }
            entries += 1;
            chunk_bytes += chunk.last().map_or(0, |(k, v)| k.len() + v.len());
            if chunk.len() >= CHUNK_ENTRIES || chunk_bytes >= CHUNK_BYTES {
                ingest.add(std::mem::take(&mut chunk), broadcast)?;
                chunk_bytes = 0;
            }
        }
        ingest.add(chunk, broadcast)?;
        let mut done = done.lock().unwrap_or_else(|p| p.into_inner());
        let (files, all, progress) = &mut *done;
        *files += 1;
        *all += entries;
        progress(Progress {
            done: *files,
            total,
            entries: *all,
        });
        Ok(())
    })?;
    ingest.finish()?;
    let mut batch = target.batch();
    for (input, pos) in &meta.cut.positions {
        batch.set_position(input, *pos);
    }
    target.commit(batch)?;
    target.flush()?;
    Ok(meta)
}
