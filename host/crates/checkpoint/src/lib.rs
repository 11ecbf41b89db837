//! Checkpoints: consistent cuts of a pipeline's state, stored incrementally, from which a host
//! recovers after a crash; and savepoints (`savepoint`), the portable full copies operators
//! take by hand.
//!
//! Owns the checkpoint directory:
//!
//! ```text
//! <checkpoint dir>/
//!   shared/<sha256:16>-<name>       every file of a checkpoint (SST, OPTIONS-*, CURRENT and
//!                                   its copy of RocksDB's MANIFEST), by content, shared by
//!                                   every checkpoint that contains it
//!   chk-<id>/manifest.json          written last: a checkpoint without it never happened
//!   chk-<id>/files/<name>           a file of a kind not stored by content: the write-ahead
//!                                   log a cut written at once carries (checkpoints of older
//!                                   versions kept their MANIFEST here too)
//! ```
//!
//! A checkpoint adds as few files and directories as it can: a cluster host cuts a checkpoint
//! a second for every partition it owns, and every new inode costs the kernel (on ext4 without
//! a journal, a scan past the inodes deleted in the last minutes). The staged cut's files are
//! linked, not copied (unless the checkpoint directory is on another file system), so
//! completing a switched cut creates two inodes: `chk-<id>/` and its manifest.
//!
//! A checkpoint is taken in three steps. [`Checkpoints::freeze`] runs between two batches, while
//! the pipeline waits: the input positions are written into the state and the state is frozen
//! at that cut (`eddy-state`'s `cut` module): under a millisecond. [`FrozenCut::stage`] runs
//! in the background while writes go on: RocksDB's checkpoint of the cut (SST files
//! hard-linked). [`complete`] follows it: the files not stored yet are linked (or copied) into
//! `shared/`, every file is checksummed, and the manifest is written last, atomically.
//! Only then is the input acknowledged up to the cut. So an incomplete checkpoint is never
//! used, and each checkpoint stores only the SST files that are new since the previous one.
//! [`Checkpoints::cut`] is the first two at once.
//!
//! Recovery ([`Checkpoints::restore_newest`]) verifies a checkpoint's files (present, right size,
//! right SHA-256) before using it, falls back to the previous one if any is wrong (and says so),
//! and rebuilds the live database from it with hard links.
//!
//! Never: talks to NATS, or freezes a cut while the database is being written (staging and
//! completing run beside the writes that follow the cut).

mod files;
mod layout;
mod manifest;
mod remote;
mod restore;
mod retention;
pub mod savepoint;
pub mod storage;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use eddy_state::StateStore;

use files::sync_dir;
pub use files::{link_or_copy, sha256_file, write_atomically};
use layout::{list_ids, shared_by_content, shared_name};
use manifest::within;
pub use manifest::{Cut, FileEntry, MANIFEST_FORMAT, Manifest};
pub use retention::Retention;

/// What can go wrong with checkpoints. Recovery falls back to an older checkpoint only on
/// [`Error::Corrupt`]: an I/O error (a disk that is full, unreadable or not mounted) is
/// reported as it is, since the newest checkpoint may be fine once it is fixed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A checkpoint's manifest or files are not what it says: never used.
    #[error("checkpoint {id} is corrupt: {reason}")]
    Corrupt {
        /// The checkpoint.
        id: u64,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest written by a newer host.
    #[error(
        "checkpoint {id} has manifest format {format}, this host reads up to {MANIFEST_FORMAT}: upgrade the host"
    )]
    Format {
        /// The checkpoint.
        id: u64,
        /// Its manifest format.
        format: u32,
    },
    /// No checkpoint of that id.
    #[error("no checkpoint {id} in {dir}")]
    Missing {
        /// The id asked for.
        id: u64,
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// Every checkpoint there is fails verification.
    #[error(
        "every checkpoint in {dir} is corrupt ({ids:?}); restore a savepoint (eddy run --from-savepoint) or move the directory away to start from empty state"
    )]
    AllCorrupt {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The checkpoints skipped.
        ids: Vec<u64>,
    },
    /// The state store refused (writing the positions, making the RocksDB checkpoint).
    #[error("state: {0}")]
    State(#[from] eddy_state::StateError),
    /// The checkpoint store beyond this host failed (unreachable, refused): the checkpoint is
    /// not complete and is tried again.
    #[error("checkpoint store: {0}")]
    Storage(#[from] storage::StorageError),
}

/// Checkpoint results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds what was being done to an I/O error.
trait IoContext<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}

/// A cut frozen in the store, its checkpoint not yet written ([`FrozenCut::stage`]).
#[derive(Debug)]
pub struct FrozenCut {
    staged: Staged,
    frozen: eddy_state::Frozen,
}

impl FrozenCut {
    /// The checkpoint's id.
    pub fn id(&self) -> u64 {
        self.staged.id
    }

    /// Writes the cut's RocksDB checkpoint into the staging directory, from any thread (the
    /// store's writes go on meanwhile): ready to be completed.
    pub fn stage(self, store: &StateStore) -> Result<Staged> {
        self.frozen.write(store)?;
        Ok(self.staged)
    }
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
    retention: Retention,
    /// Creation times of checkpoints, by id, as read from their manifests (for retention by
    /// age: a manifest never changes).
    created: Mutex<HashMap<u64, u64>>,
    /// SHA-256 of SST and OPTIONS files already hashed, by name and size: RocksDB never changes
    /// one once written.
    sums: Mutex<HashMap<(String, u64), String>>,
    /// The store beyond this host, if any: then `dir` is a cache of it, and a checkpoint is
    /// complete only once its manifest is stored there.
    remote: Option<remote::Remote>,
    /// Ids this host gives new checkpoints start above this (a partition's owner in cluster
    /// mode: its generation, shifted, so two owners never write the same names).
    id_base: u64,
}

impl Checkpoints {
    /// Checkpoints in `dir`, staged under `staging` (which must be on the database's file
    /// system, for hard links), keeping the newest `retain`.
    pub fn new(dir: &Path, staging: &Path, pipeline: &str, retain: usize) -> Checkpoints {
        Checkpoints {
            dir: dir.to_path_buf(),
            staging: staging.to_path_buf(),
            pipeline: pipeline.to_string(),
            retention: Retention::newest(retain),
            created: Mutex::default(),
            sums: Mutex::default(),
            remote: None,
            id_base: 0,
        }
    }

    /// Keeps checkpoints by `retention` (count, and age for time-travel queries) instead of
    /// the newest `retain` alone.
    pub fn with_retention(mut self, retention: Retention) -> Checkpoints {
        self.retention = Retention {
            count: retention.count.max(1),
            ..retention
        };
        self
    }

    /// How checkpoints are kept.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Gives new checkpoints ids in `(base, base + 2^32)`: a partition's `g`-th owner in
    /// cluster mode uses `g << 32`, so ids grow from owner to owner and never collide.
    pub fn with_id_base(mut self, base: u64) -> Checkpoints {
        self.id_base = base;
        self
    }

    /// Keeps every checkpoint in `storage` too: completed there (manifest last), restored
    /// from there, with `dir` as the local cache that spares downloads.
    pub fn with_storage(mut self, storage: Arc<dyn storage::Storage>) -> Checkpoints {
        self.remote = Some(remote::Remote::new(storage));
        self
    }

    /// The store beyond this host, if any.
    pub fn storage(&self) -> Option<&Arc<dyn storage::Storage>> {
        self.remote.as_ref().map(|r| r.storage())
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id the next checkpoint gets: one more than any checkpoint on disk (complete or
    /// not) or in the store.
    pub fn next_id(&self) -> u64 {
        let end = self.id_base.saturating_add(1 << 32);
        let max = list_ids(&self.dir, false)
            .into_iter()
            .chain(list_ids(&self.staging, false))
            .chain(self.remote.as_ref().map(|r| r.newest_id()))
            .filter(|id| *id < end || self.id_base == 0)
            .max()
            .unwrap_or(0);
        max.max(self.id_base) + 1
    }

    /// Takes a cut of `store` and writes it (see [`Checkpoints::freeze`] and
    /// [`FrozenCut::stage`]). The caller must not write to the store meanwhile.
    pub fn cut(&self, store: &StateStore, id: u64, cut: Cut) -> Result<Staged> {
        self.freeze(store, id, cut)?.stage(store)
    }

    /// Takes a cut of `store`: writes `cut.positions` into it, then freezes it (about a
    /// millisecond; the caller must not write to the store meanwhile). Writes after this
    /// returns are not in the checkpoint.
    pub fn freeze(&self, store: &StateStore, id: u64, cut: Cut) -> Result<FrozenCut> {
        let started = Instant::now();
        let mut batch = store.batch();
        for (input, pos) in &cut.positions {
            batch.set_position(input, *pos);
        }
        store.commit(batch)?;
        std::fs::create_dir_all(&self.staging)
            .doing(|| format!("create {}", self.staging.display()))?;
        let dir = self.staging.join(format!("chk-{id:010}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).doing(|| format!("clear {}", dir.display()))?;
        }
        let frozen = store.freeze(id, &dir)?;
        Ok(FrozenCut {
            staged: Staged {
                id,
                dir,
                cut,
                created_ms: now_ms(),
                key_groups: store.key_groups(),
                cut_ms: started.elapsed().as_millis() as u64,
                started,
            },
            frozen,
        })
    }

    /// Stores a staged cut: the files [`shared_by_content`] names into `shared/` when new, any
    /// other into `chk-<id>/files`, every file checksummed, the manifest last. Returns the
    /// manifest; the staged directory is left for the caller (queries read it), see
    /// [`Checkpoints::retire_staged`].
    pub fn complete(&self, staged: &Staged) -> Result<Manifest> {
        let shared = self.dir.join("shared");
        let own = self.dir.join(format!("chk-{:010}", staged.id));
        let files_dir = own.join("files");
        if !shared.is_dir() {
            std::fs::create_dir_all(&shared).doing(|| format!("create {}", shared.display()))?;
        }
        std::fs::create_dir_all(&own).doing(|| format!("create {}", own.display()))?;
        let mut files = Vec::new();
        let (mut total, mut new_bytes) = (0u64, 0u64);
        let read = || -> std::io::Result<Vec<std::fs::DirEntry>> {
            std::fs::read_dir(&staged.dir)?.collect()
        };
        let mut entries = read().doing(|| format!("list {}", staged.dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            let size = entry
                .metadata()
                .doing(|| format!("stat {}", path.display()))?
                .len();
            total += size;
            if let Some(unchanging) = shared_by_content(&name) {
                let sha = if unchanging {
                    self.remembered_sum(&path, &name, size)?
                } else {
                    sha256_file(&path)?
                };
                let stored = shared_name(&sha, &name);
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
                std::fs::create_dir_all(&files_dir)
                    .doing(|| format!("create {}", files_dir.display()))?;
                std::fs::copy(&path, &target)
                    .doing(|| format!("copy {} to {}", path.display(), target.display()))?;
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
            complete_ms: 0,
            uploaded_bytes: 0,
        };
        let mut manifest = manifest;
        if let Some(remote) = &self.remote {
            manifest.uploaded_bytes = remote.upload_files(&self.dir, &manifest)?;
        }
        manifest.complete_ms = staged.started.elapsed().as_millis() as u64;
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(std::io::Error::other)
            .doing(|| "encode the manifest".into())?;
        // The store's manifest first: a checkpoint exists once the store has it, and the
        // local copy is only a cache of it.
        if let Some(remote) = &self.remote {
            remote.put_manifest(manifest.id, &json)?;
        }
        write_atomically(&own.join("manifest.json"), &json)?;
        sync_dir(&own);
        sync_dir(&self.dir);
        Ok(manifest)
    }

    /// Forgets the SST checksums remembered by name and size: the next cuts come from another
    /// database (a promoted shadow's), whose files may reuse names with other contents.
    pub fn forget_sums(&self) {
        self.sums.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The SHA-256 of a file RocksDB never changes, remembered by name and size.
    fn remembered_sum(&self, path: &Path, name: &str, size: u64) -> Result<String> {
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
    /// checkpoint directories older than the newest complete one are removed too. Never called
    /// while a frozen cut is being staged (its directory would go): the run loop freezes the
    /// next cut only once the previous checkpoint is complete and retained.
    pub fn retain(&self, keep_staged: Option<u64>) -> Result<()> {
        // Every staged cut but the kept one goes, `chk-<id>.tmp` too: RocksDB builds a cut
        // there and renames it, and one a crash left mid-cut is never reused (ids only grow).
        let kept_staged = keep_staged.map(|id| format!("chk-{id:010}"));
        if let Ok(read) = std::fs::read_dir(&self.staging) {
            for entry in read.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("chk-") && Some(&name) != kept_staged.as_ref() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let complete = list_ids(&self.dir, true);
        let keep = self.kept(&complete)?;
        let newest = complete.last().copied().unwrap_or(0);
        let mut local = HashSet::new();
        for id in list_ids(&self.dir, false) {
            if !keep.contains(&id) && (id < newest || complete.contains(&id)) {
                let dir = self.dir.join(format!("chk-{id:010}"));
                std::fs::remove_dir_all(&dir).doing(|| format!("remove {}", dir.display()))?;
            } else {
                local.insert(id);
            }
        }
        let used = self.collect_shared(keep.iter().copied());
        if let Some(remote) = &self.remote {
            remote.retain(|ids| self.kept(ids), |id| self.load(id).ok())?;
        }
        self.forget_retired(local, &used);
        Ok(())
    }

    /// Forgets the creation times of checkpoints that are gone and the checksums of SST files
    /// no kept checkpoint uses (`used`): a host cutting a checkpoint a second cuts millions in
    /// a few weeks, and both memos would otherwise keep an entry for every one of them.
    /// `live`: the checkpoints left in the local directory.
    fn forget_retired(&self, mut live: HashSet<u64>, used: &HashSet<String>) {
        if let Some(ids) = self.remote.as_ref().and_then(|r| r.known_ids()) {
            live.extend(ids);
        }
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live.contains(id));
        self.sums
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(name, _), sha| used.contains(&shared_name(sha, name)));
    }

    /// Which of the completed checkpoints `ids` retention keeps.
    fn kept(&self, ids: &[u64]) -> Result<HashSet<u64>> {
        if !self.retention.by_age() {
            let ages = ids.iter().map(|id| (*id, 0)).collect();
            return Ok(self.retention.keep(&ages, 0));
        }
        // A checkpoint whose time cannot be read now (its manifest unreadable, the store not
        // answering) is kept: deleting is the one step that cannot be taken back.
        let mut ages = BTreeMap::new();
        let mut unknown = Vec::new();
        for id in ids {
            match self.created_ms(*id) {
                Ok(created) => {
                    ages.insert(*id, created);
                }
                Err(e) => {
                    tracing::warn!(checkpoint = id, "kept: cannot read when it was cut ({e})");
                    unknown.push(*id);
                }
            }
        }
        let mut keep = self.retention.keep(&ages, now_ms());
        keep.extend(unknown);
        Ok(keep)
    }

    /// When checkpoint `id` was cut, from its manifest (local, else in the store).
    fn created_ms(&self, id: u64) -> Result<u64> {
        let memo = |c: u64| {
            self.created
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, c);
            c
        };
        if let Some(c) = self
            .created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(*c);
        }
        match (self.load(id), &self.remote) {
            (Ok(m), _) => Ok(memo(m.created_ms)),
            (Err(Error::Missing { .. }), Some(remote)) => Ok(memo(remote.manifest(id)?.created_ms)),
            (Err(e), _) => Err(e),
        }
    }

    /// Deletes the shared files no checkpoint of `keep` uses; returns the ones they use.
    fn collect_shared(&self, keep: impl Iterator<Item = u64>) -> HashSet<String> {
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
        used
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
    pub fn load(&self, id: u64) -> Result<Manifest> {
        let path = self.dir.join(format!("chk-{id:010}")).join("manifest.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Missing {
                    id,
                    dir: self.dir.clone(),
                });
            }
            Err(source) => {
                return Err(Error::Io {
                    what: format!("read {}", path.display()),
                    source,
                });
            }
        };
        Manifest::parse(id, &bytes, &format!("manifest {}", path.display()))
    }

    /// Completed checkpoints in the local directory, oldest first.
    pub fn list_local(&self) -> Vec<Manifest> {
        list_ids(&self.dir, true)
            .into_iter()
            .filter_map(|id| self.load(id).ok())
            .collect()
    }

    /// Ids of the completed checkpoints, oldest first (in the store, when there is one),
    /// whether or not their manifests read.
    pub fn ids(&self) -> Result<Vec<u64>> {
        match &self.remote {
            Some(remote) => remote.ids(),
            None => Ok(list_ids(&self.dir, true)),
        }
    }

    /// Completed checkpoints, oldest first (those in the store, when there is one).
    pub fn list(&self) -> Vec<Manifest> {
        match &self.remote {
            Some(remote) => self.manifests(remote, remote.ids().unwrap_or_default()),
            None => list_ids(&self.dir, true)
                .into_iter()
                .filter_map(|id| self.load(id).ok())
                .collect(),
        }
    }

    /// Completed checkpoints, oldest first, as this run knows them: with a store, from its
    /// view of the store once it has one (the checkpoints retention keeps, without a listing:
    /// time-travel queries ask at every query), else as [`Checkpoints::list`].
    pub fn retained(&self) -> Vec<Manifest> {
        match self.remote.as_ref().map(|r| (r, r.known_ids())) {
            Some((remote, Some(ids))) => self.manifests(remote, ids),
            _ => self.list(),
        }
    }

    /// The manifests of checkpoints `ids` in the store, from the local cache where it has
    /// them; those neither has are left out.
    fn manifests(&self, remote: &remote::Remote, ids: Vec<u64>) -> Vec<Manifest> {
        ids.into_iter()
            .filter_map(|id| self.load(id).ok().or_else(|| remote.manifest(id).ok()))
            .collect()
    }

    /// Deletes checkpoint `id`: its manifest first, then its own files, from the store too
    /// when there is one. Its shared files stay: a running host may be uploading a checkpoint
    /// that uses them, or count on them being stored. The pipeline's host collects them at its
    /// next retention, once no checkpoint it keeps uses them.
    pub fn delete(&self, id: u64) -> Result<()> {
        let dir = self.dir.join(format!("chk-{id:010}"));
        let in_store = match &self.remote {
            Some(remote) => remote.ids()?.contains(&id),
            None => false,
        };
        if !dir.is_dir() && !in_store {
            return Err(Error::Missing {
                id,
                dir: self.dir.clone(),
            });
        }
        if let Some(remote) = &self.remote {
            remote.delete(id)?;
        }
        if dir.is_dir() {
            // The manifest first, as in the store: a directory without one is no checkpoint.
            let manifest = dir.join("manifest.json");
            if manifest.is_file() {
                std::fs::remove_file(&manifest)
                    .doing(|| format!("remove {}", manifest.display()))?;
            }
            std::fs::remove_dir_all(&dir).doing(|| format!("remove {}", dir.display()))?;
        }
        Ok(())
    }
}

/// Wall-clock time, ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
