//! Checkpoints kept in a store beyond the host ([`crate::storage::Storage`]): what a
//! checkpoint uploads (SST files once, by content; its own small files; the manifest last),
//! what a restore downloads (only what the local cache lacks), and what retention deletes
//! there.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::files::in_parallel;
use crate::storage::{Storage, StorageError};
use crate::{Error, Manifest, Result, sha256_file};

/// The store and what this host knows of it.
pub(crate) struct Remote {
    storage: Arc<dyn Storage>,
    /// Shared SST files known to be in the store (listed once, then kept up to date).
    shared: Mutex<Option<HashSet<String>>>,
    /// The newest checkpoint id seen in the store (listed once).
    newest: Mutex<Option<u64>>,
    /// The newest checkpoint whose manifest this host stored.
    written: Mutex<Option<u64>>,
}

fn manifest_name(id: u64) -> String {
    format!("chk-{id:010}/manifest.json")
}

impl Remote {
    pub(crate) fn new(storage: Arc<dyn Storage>) -> Remote {
        Remote {
            storage,
            shared: Mutex::new(None),
            newest: Mutex::new(None),
            written: Mutex::new(None),
        }
    }

    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Ids of the complete checkpoints in the store, ascending.
    pub(crate) fn ids(&self) -> Result<Vec<u64>> {
        let mut ids: Vec<u64> = self
            .storage
            .list("chk-")?
            .iter()
            .filter_map(|n| {
                n.strip_suffix("/manifest.json")?
                    .strip_prefix("chk-")?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let newest = ids.last().copied().unwrap_or(0);
        let mut known = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        *known = Some(known.unwrap_or(0).max(newest));
        Ok(ids)
    }

    /// The newest checkpoint id in the store (0: none, or the store cannot be listed; a cut
    /// then gets a local id, and completing it fails until the store answers).
    pub(crate) fn newest_id(&self) -> u64 {
        let known = *self.newest.lock().unwrap_or_else(|p| p.into_inner());
        match known {
            Some(id) => id,
            None => self
                .ids()
                .ok()
                .and_then(|ids| ids.last().copied())
                .unwrap_or(0),
        }
    }

    /// The manifest of checkpoint `id`, from the store.
    pub(crate) fn manifest(&self, id: u64) -> Result<Manifest> {
        let bytes =
            patiently(|| self.storage.get_bytes(&manifest_name(id))).map_err(|e| match e {
                StorageError::NotFound(_) => Error::Corrupt {
                    id,
                    reason: format!("its manifest is gone from {}", self.storage.describe()),
                },
                e => Error::Storage(e),
            })?;
        Manifest::parse(
            id,
            &bytes,
            &format!("its manifest in {}", self.storage.describe()),
        )
    }

    fn shared_in_store(&self) -> Result<std::sync::MutexGuard<'_, Option<HashSet<String>>>> {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if shared.is_none() {
            *shared = Some(self.storage.list("shared/")?.into_iter().collect());
        }
        Ok(shared)
    }

    /// Uploads the files of `m` the store lacks (shared SST files once; the checkpoint's own
    /// files always) from the local directory `dir`; returns the bytes sent.
    pub(crate) fn upload_files(&self, dir: &Path, m: &Manifest) -> Result<u64> {
        let stored: Vec<&crate::FileEntry> = {
            let shared = self.shared_in_store()?;
            m.files
                .iter()
                .filter(|f| {
                    !(f.stored.starts_with("shared/")
                        && shared.as_ref().is_some_and(|s| s.contains(&f.stored)))
                })
                .collect()
        };
        in_parallel(&stored, TRANSFERS, |f| -> Result<()> {
            self.storage.put_file(&f.stored, &dir.join(&f.stored))?;
            if f.stored.starts_with("shared/")
                && let Some(s) = self.shared_in_store()?.as_mut()
            {
                s.insert(f.stored.clone());
            }
            Ok(())
        })?;
        Ok(stored.iter().map(|f| f.size).sum())
    }

    /// Stores checkpoint `id`'s manifest: from now on the checkpoint exists.
    pub(crate) fn put_manifest(&self, id: u64, json: &[u8]) -> Result<()> {
        self.storage.put_bytes(&manifest_name(id), json)?;
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        *newest = Some(newest.unwrap_or(0).max(id));
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        *written = Some(written.unwrap_or(0).max(id));
        Ok(())
    }

    /// Makes checkpoint `id` whole in the local directory `dir`: its manifest, and every file
    /// the cache lacks or holds with another size (checksums are verified afterwards, like a
    /// local checkpoint's). A file missing from the store makes the checkpoint corrupt.
    pub(crate) fn fetch(&self, dir: &Path, id: u64) -> Result<Manifest> {
        let m = self.manifest(id)?;
        let missing: Vec<&crate::FileEntry> = m
            .files
            .iter()
            .filter(|f| {
                let local = dir.join(&f.stored);
                !(std::fs::metadata(&local).is_ok_and(|meta| meta.len() == f.size)
                    && sha256_file(&local).is_ok_and(|sum| sum == f.sha256))
            })
            .collect();
        in_parallel(&missing, TRANSFERS, |f| {
            patiently(|| self.storage.get_file(&f.stored, &dir.join(&f.stored))).map_err(
                |e| match e {
                    StorageError::NotFound(_) => Error::Corrupt {
                        id,
                        reason: format!(
                            "file {} is missing from {}",
                            f.stored,
                            self.storage.describe()
                        ),
                    },
                    e => Error::Storage(e),
                },
            )
        })?;
        let fetched = (missing.len(), missing.iter().map(|f| f.size).sum::<u64>());
        let json = serde_json::to_vec_pretty(&m)
            .map_err(std::io::Error::other)
            .map_err(|source| Error::Io {
                what: "encode the manifest".into(),
                source,
            })?;
        let own = dir.join(format!("chk-{id:010}"));
        std::fs::create_dir_all(&own).map_err(|source| Error::Io {
            what: format!("create {}", own.display()),
            source,
        })?;
        crate::write_atomically(&own.join("manifest.json"), &json)?;
        tracing::info!(
            checkpoint = id,
            files = fetched.0,
            bytes = fetched.1,
            cached = m.files.len() - fetched.0,
            "fetched checkpoint from {}",
            self.storage.describe()
        );
        Ok(m)
    }

    /// Deletes checkpoint `id`'s own objects from the store (shared files go with
    /// [`Remote::retain`]).
    pub(crate) fn delete(&self, id: u64) -> Result<()> {
        // The manifest first: a checkpoint without one never happened.
        self.storage.delete(&manifest_name(id))?;
        for name in self.storage.list(&format!("chk-{id:010}/"))? {
            self.storage.delete(&name)?;
        }
        Ok(())
    }

    /// Keeps the checkpoints `choose` picks out of those in the store, and the shared files
    /// they use; deletes the rest. `cached` gives a manifest from the local cache when it has
    /// it.
    pub(crate) fn retain(
        &self,
        choose: impl Fn(&[u64]) -> Result<HashSet<u64>>,
        cached: impl Fn(u64) -> Option<Manifest>,
    ) -> Result<()> {
        let ids = self.ids()?;
        // A listing without the checkpoint this host just stored is stale (a replica behind,
        // a listing cut short): judged by it, that checkpoint's files would look unused.
        let written = *self.written.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = written
            && !ids.contains(&w)
        {
            // Common right after a write to a replicated store: the next retention catches up.
            tracing::debug!(
                checkpoint = w,
                "{} listed without the newest checkpoint stored here; deleting nothing this time",
                self.storage.describe()
            );
            return Ok(());
        }
        let keep = choose(&ids)?;
        let mut used = HashSet::new();
        for id in &keep {
            let m = match cached(*id) {
                Some(m) => m,
                None => self.manifest(*id)?,
            };
            used.extend(m.files.into_iter().map(|f| f.stored));
        }
        for id in ids.iter().filter(|id| !keep.contains(id)) {
            self.delete(*id)?;
        }
        // Own files of checkpoints that never completed (a host that died mid-upload), older
        // than the newest complete one.
        let newest = keep.iter().max().copied().unwrap_or(0);
        for name in self.storage.list("chk-")? {
            let id: Option<u64> = name
                .strip_prefix("chk-")
                .and_then(|r| r.split('/').next())
                .and_then(|i| i.parse().ok());
            if id.is_some_and(|id| id < newest && !keep.contains(&id)) {
                self.storage.delete(&name)?;
            }
        }
        // Only shared files this host knows of go: those its first listing found and those it
        // stored itself. A file that appeared since may be another writer's upload in flight
        // (a partition's new owner, while this host, paused, has not noticed it lost it).
        let mut shared = self.shared_in_store()?;
        if let Some(present) = shared.as_mut() {
            let unused: Vec<String> = present
                .iter()
                .filter(|n| !used.contains(*n))
                .cloned()
                .collect();
            for name in unused {
                self.storage.delete(&name)?;
                present.remove(&name);
            }
        }
        Ok(())
    }
}

/// Reads `get` again when the store says not found, a few times over about two seconds,
/// before believing it: a replica that has not caught up answers reads of what was just
/// stored that way, and a checkpoint judged corrupt sends the restore to an older one.
fn patiently<T>(
    get: impl Fn() -> std::result::Result<T, StorageError>,
) -> std::result::Result<T, StorageError> {
    let mut wait = std::time::Duration::from_millis(250);
    for _ in 0..3 {
        match get() {
            Err(StorageError::NotFound(_)) => {
                std::thread::sleep(wait);
                wait *= 2;
            }
            other => return other,
        }
    }
    get()
}

/// Transfers at once per checkpoint: a store answers each request after a round trip, so a
/// few in flight fill the link where one leaves it idle.
const TRANSFERS: usize = 4;
