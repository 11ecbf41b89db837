//! Checkpoints: consistent cuts of a pipeline's state, stored incrementally, from which a host
//! recovers after a crash; and savepoints (`savepoint`), the portable full copies operators
//! take by hand.
//!
//! Owns the checkpoint directory:
//!
//! ```text
//! <checkpoint dir>/
//!   shared/<sha256:16>-<name>.sst   SST files, shared by every checkpoint that contains them
//!   chk-<id>/files/<name>           the small per-checkpoint files (MANIFEST-*, CURRENT, OPTIONS-*)
//!   chk-<id>/manifest.json          written last: a checkpoint without it never happened
//! ```
//!
//! A checkpoint is taken in two steps. [`Checkpoints::cut`] runs between two batches, while the
//! pipeline waits: the input positions are written into the state and RocksDB makes a checkpoint
//! of the database (memtables flushed, SST files hard-linked): milliseconds. [`complete`] runs in
//! the background: the SST files not stored yet are linked (or copied) into `shared/`, every
//! file is checksummed, and the manifest is written last, atomically. Only then is the input
//! acknowledged up to the cut. So an incomplete checkpoint is never used, and each checkpoint
//! stores only the SST files that are new since the previous one.
//!
//! Recovery ([`Checkpoints::restore_newest`]) verifies a checkpoint's files (present, right size,
//! right SHA-256) before using it, falls back to the previous one if any is wrong (and says so),
//! and rebuilds the live database from it with hard links.
//!
//! Never: talks to NATS, or runs while the database it cuts is being written.

pub mod savepoint;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::StateStore;

/// Version of the manifest format this host writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// What a checkpoint records besides its files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cut {
    /// Position of every input: all its events up to here are in the state.
    pub positions: BTreeMap<String, u64>,
    /// Per input, events after its position that are in the state too (handled out of order
    /// while waiting on lookups): skipped when replayed.
    #[serde(default)]
    pub done_after: BTreeMap<String, Vec<u64>>,
    /// The plugin version that produced the state.
    pub plugin_version: String,
    /// Outputs published up to the cut (a count, for inspection).
    #[serde(default)]
    pub outputs: u64,
}

/// One file of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Its name in the database directory.
    pub name: String,
    /// Where it is stored, relative to the checkpoint directory.
    pub stored: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// A completed checkpoint's `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format.
    pub format: u32,
    /// Increasing id.
    pub id: u64,
    /// The pipeline's name.
    pub pipeline: String,
    /// When the cut was taken, ms since the Unix epoch.
    pub created_ms: u64,
    /// Key groups of the state.
    pub key_groups: u32,
    /// Positions, plugin version, outputs.
    #[serde(flatten)]
    pub cut: Cut,
    /// Every file of the database at the cut.
    pub files: Vec<FileEntry>,
    /// Bytes of the database at the cut.
    pub total_bytes: u64,
    /// Bytes this checkpoint added to `shared/` (its incremental size).
    pub new_bytes: u64,
    /// Milliseconds the pipeline waited for the cut.
    pub cut_ms: u64,
    /// Milliseconds from cut to manifest.
    pub complete_ms: u64,
}

/// A cut taken but not yet completed.
#[derive(Debug)]
pub struct Staged {
    id: u64,
    dir: PathBuf,
    cut: Cut,
    created_ms: u64,
    key_groups: u32,
    cut_ms: u64,
    started: Instant,
}

impl Staged {
    /// The checkpoint's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// What it records.
    pub fn cut(&self) -> &Cut {
        &self.cut
    }

    /// The RocksDB checkpoint directory (an openable database).
    pub fn db_dir(&self) -> &Path {
        &self.dir
    }
}

/// The checkpoints of one pipeline on one host.
pub struct Checkpoints {
    dir: PathBuf,
    staging: PathBuf,
    pipeline: String,
    retain: usize,
    /// SHA-256 of SST files already hashed, by name and size: SST files never change.
    sums: Mutex<HashMap<(String, u64), String>>,
}

impl Checkpoints {
    /// Checkpoints in `dir`, staged under `staging` (which must be on the database's file
    /// system, for hard links), keeping the newest `retain`.
    pub fn new(dir: &Path, staging: &Path, pipeline: &str, retain: usize) -> Checkpoints {
        Checkpoints {
            dir: dir.to_path_buf(),
            staging: staging.to_path_buf(),
            pipeline: pipeline.to_string(),
            retain: retain.max(1),
            sums: Mutex::default(),
        }
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id the next checkpoint gets: one more than any checkpoint on disk, complete or not.
    pub fn next_id(&self) -> u64 {
        let max = list_ids(&self.dir, false)
            .into_iter()
            .chain(list_ids(&self.staging, false))
            .max()
            .unwrap_or(0);
        max + 1
    }

    /// Takes a cut of `store`: writes `cut.positions` into it, then a RocksDB checkpoint.
    /// The caller must not write to the store meanwhile.
    pub fn cut(&self, store: &StateStore, id: u64, cut: Cut) -> anyhow::Result<Staged> {
        let started = Instant::now();
        let mut batch = store.batch();
        for (input, pos) in &cut.positions {
            batch.set_position(input, *pos);
        }
        store.commit(batch)?;
        std::fs::create_dir_all(&self.staging)?;
        let dir = self.staging.join(format!("chk-{id:010}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        store
            .create_checkpoint(&dir)
            .with_context(|| format!("RocksDB checkpoint into {}", dir.display()))?;
        Ok(Staged {
            id,
            dir,
            cut,
            created_ms: now_ms(),
            key_groups: store.key_groups(),
            cut_ms: started.elapsed().as_millis() as u64,
            started,
        })
    }

    /// Stores a staged cut: new SST files into `shared/`, the rest into `chk-<id>/files`, every
    /// file checksummed, the manifest last. Returns the manifest; the staged directory is left
    /// for the caller (queries read it), see [`Checkpoints::retire_staged`].
    pub fn complete(&self, staged: &Staged) -> anyhow::Result<Manifest> {
        let shared = self.dir.join("shared");
        let own = self.dir.join(format!("chk-{:010}", staged.id));
        let files_dir = own.join("files");
        std::fs::create_dir_all(&shared)?;
        std::fs::create_dir_all(&files_dir)?;
        let mut files = Vec::new();
        let (mut total, mut new_bytes) = (0u64, 0u64);
        let mut entries: Vec<_> = std::fs::read_dir(&staged.dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            let size = entry.metadata()?.len();
            total += size;
            if name.ends_with(".sst") {
                let sha = self.sst_sum(&path, &name, size)?;
                let stored = format!("shared/{}-{name}", &sha[..16]);
                let target = self.dir.join(&stored);
                if !target.exists() {
                    link_or_copy(&path, &target)?;
                    new_bytes += size;
                }
                files.push(FileEntry {
                    name,
                    stored,
                    size,
                    sha256: sha,
                });
            } else {
                let target = files_dir.join(&name);
                std::fs::copy(&path, &target)?;
                new_bytes += size;
                files.push(FileEntry {
                    stored: format!("chk-{:010}/files/{name}", staged.id),
                    sha256: sha256_file(&target)?,
                    name,
                    size,
                });
            }
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: staged.id,
            pipeline: self.pipeline.clone(),
            created_ms: staged.created_ms,
            key_groups: staged.key_groups,
            cut: staged.cut.clone(),
            files,
            total_bytes: total,
            new_bytes,
            cut_ms: staged.cut_ms,
            complete_ms: staged.started.elapsed().as_millis() as u64,
        };
        write_atomically(
            &own.join("manifest.json"),
            &serde_json::to_vec_pretty(&manifest)?,
        )?;
        sync_dir(&own);
        sync_dir(&self.dir);
        Ok(manifest)
    }

    fn sst_sum(&self, path: &Path, name: &str, size: u64) -> anyhow::Result<String> {
        let key = (name.to_string(), size);
        if let Some(sum) = self
            .sums
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(sum.clone());
        }
        let sum = sha256_file(path)?;
        self.sums
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, sum.clone());
        Ok(sum)
    }

    /// Deletes staged directories other than `keep` (the one queries read), and checkpoints
    /// beyond the newest `retain`, and shared files no kept checkpoint uses. Incomplete
    /// checkpoint directories older than the newest complete one are removed too.
    pub fn retain(&self, keep_staged: Option<u64>) -> anyhow::Result<()> {
        for id in list_ids(&self.staging, false) {
            if Some(id) != keep_staged {
                let _ = std::fs::remove_dir_all(self.staging.join(format!("chk-{id:010}")));
            }
        }
        let complete = list_ids(&self.dir, true);
        let keep: HashSet<u64> = complete.iter().rev().take(self.retain).copied().collect();
        let newest = complete.last().copied().unwrap_or(0);
        for id in list_ids(&self.dir, false) {
            if !keep.contains(&id) && (id < newest || complete.contains(&id)) {
                std::fs::remove_dir_all(self.dir.join(format!("chk-{id:010}")))?;
            }
        }
        self.collect_shared(keep.into_iter());
        Ok(())
    }

    /// Deletes the shared files no checkpoint of `keep` uses.
    fn collect_shared(&self, keep: impl Iterator<Item = u64>) {
        let mut used = HashSet::new();
        for id in keep {
            if let Ok(m) = self.load(id) {
                used.extend(m.files.into_iter().map(|f| f.stored));
            }
        }
        if let Ok(read) = std::fs::read_dir(self.dir.join("shared")) {
            for entry in read.flatten() {
                let stored = format!("shared/{}", entry.file_name().to_string_lossy());
                if !used.contains(&stored) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// The staged directory of checkpoint `id`, if still there.
    pub fn staged_dir(&self, id: u64) -> Option<PathBuf> {
        let dir = self.staging.join(format!("chk-{id:010}"));
        dir.is_dir().then_some(dir)
    }

    /// Removes a staged cut that will not be completed.
    pub fn retire_staged(&self, staged: Staged) {
        let _ = std::fs::remove_dir_all(&staged.dir);
    }

    /// The manifest of checkpoint `id`.
    pub fn load(&self, id: u64) -> anyhow::Result<Manifest> {
        let path = self.dir.join(format!("chk-{id:010}")).join("manifest.json");
        let bytes = std::fs::read(&path)
            .with_context(|| format!("checkpoint {id} has no manifest ({})", path.display()))?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("checkpoint {id}: manifest is not valid"))?;
        if m.format > MANIFEST_FORMAT {
            bail!(
                "checkpoint {id} has manifest format {}, this host reads up to {MANIFEST_FORMAT}: upgrade the host",
                m.format
            );
        }
        Ok(m)
    }

    /// Completed checkpoints, oldest first.
    pub fn list(&self) -> Vec<Manifest> {
        list_ids(&self.dir, true)
            .into_iter()
            .filter_map(|id| self.load(id).ok())
            .collect()
    }

    /// Deletes checkpoint `id` (its shared files go when no other checkpoint uses them).
    pub fn delete(&self, id: u64) -> anyhow::Result<()> {
        let dir = self.dir.join(format!("chk-{id:010}"));
        if !dir.is_dir() {
            bail!("no checkpoint {id} in {}", self.dir.display());
        }
        std::fs::remove_dir_all(&dir)?;
        self.collect_shared(list_ids(&self.dir, true).into_iter());
        Ok(())
    }

    /// Checks that every file of `m` is present with its size and checksum.
    pub fn verify(&self, m: &Manifest) -> anyhow::Result<()> {
        for f in &m.files {
            let path = self.dir.join(&f.stored);
            let meta = std::fs::metadata(&path)
                .map_err(|e| anyhow!("file {} is missing ({e})", f.stored))?;
            if meta.len() != f.size {
                bail!(
                    "file {} has {} bytes, the manifest says {}",
                    f.stored,
                    meta.len(),
                    f.size
                );
            }
            let sum = sha256_file(&path)?;
            if sum != f.sha256 {
                bail!("file {} fails its checksum", f.stored);
            }
        }
        Ok(())
    }

    /// Rebuilds `db_dir` from the newest checkpoint that verifies, falling back to older ones
    /// (with a warning naming what was wrong). `None` if there is no usable checkpoint: the
    /// pipeline starts from empty state at the beginning of its inputs.
    pub fn restore_newest(&self, db_dir: &Path) -> anyhow::Result<Option<Manifest>> {
        let ids = list_ids(&self.dir, true);
        let mut skipped = Vec::new();
        for id in ids.into_iter().rev() {
            let m = match self.load(id) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(
                        checkpoint = id,
                        "checkpoint unusable: {e:#}; falling back to the previous one"
                    );
                    skipped.push(id);
                    continue;
                }
            };
            if let Err(e) = self.verify(&m) {
                tracing::warn!(
                    checkpoint = id,
                    "checkpoint is corrupt: {e:#}; falling back to the previous one"
                );
                skipped.push(id);
                continue;
            }
            self.materialize(&m, db_dir)?;
            if !skipped.is_empty() {
                tracing::warn!(
                    restored = id,
                    skipped = ?skipped,
                    "restored an older checkpoint because newer ones are corrupt"
                );
            }
            return Ok(Some(m));
        }
        if !skipped.is_empty() {
            bail!(
                "every checkpoint in {} is corrupt ({skipped:?}); restore a savepoint (eddy run --from-savepoint) or move the directory away to start from empty state",
                self.dir.display()
            );
        }
        Ok(None)
    }

    /// Writes the database of checkpoint `m` into `db_dir` (replacing what is there).
    pub fn materialize(&self, m: &Manifest, db_dir: &Path) -> anyhow::Result<()> {
        if db_dir.exists() {
            std::fs::remove_dir_all(db_dir)
                .with_context(|| format!("cannot clear {}", db_dir.display()))?;
        }
        std::fs::create_dir_all(db_dir)?;
        for f in &m.files {
            let from = self.dir.join(&f.stored);
            let to = db_dir.join(&f.name);
            if f.name.ends_with(".sst") {
                link_or_copy(&from, &to)?;
            } else {
                // RocksDB may append to MANIFEST files: never share them with the checkpoint.
                std::fs::copy(&from, &to)?;
            }
        }
        Ok(())
    }
}

/// Ids of the `chk-<id>` directories in `dir`, ascending; with `complete`, only those with a
/// manifest.
fn list_ids(dir: &Path, complete: bool) -> Vec<u64> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ids: Vec<u64> = read
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_prefix("chk-")?.parse().ok()?;
            (!complete || e.path().join("manifest.json").is_file()).then_some(id)
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Hard-links `from` to `to`, or copies it when they are on different file systems.
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp)
            .with_context(|| format!("copy {} to {}", from.display(), tmp.display()))?;
        std::fs::rename(&tmp, to)?;
    }
    Ok(())
}

/// SHA-256 of a file, hex.
pub(crate) fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `bytes` to `path` through a temporary file, fsynced, renamed into place.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
