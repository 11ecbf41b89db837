//! Checkpoints kept in a store beyond the host ([`crate::storage::Storage`]): what a
//! checkpoint uploads (its files under `shared/` once, by content; any of its own; the
//! manifest last),
//! what a restore downloads (only what the local cache lacks), and what retention deletes
//! there.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::files::in_parallel;
use crate::storage::{Storage, StorageError};
use crate::{Error, Manifest, Result, sha256_file};

/// The store and what this host knows of it.
pub(crate) struct Remote {
    storage: Arc<dyn Storage>,
    /// The objects in the store as far as this host knows: one listing, then its own puts
    /// and deletes. Uploads and retention go by it, so a run lists the store once rather than
    /// at every checkpoint (a NATS object store's listing reads the metadata of every object
    /// in the bucket, every partition's), and retention never deletes what another writer
    /// stored after that first look.
    known: Mutex<Option<BTreeSet<String>>>,
    /// The newest checkpoint id seen in the store (listed once).
    newest: Mutex<Option<u64>>,
}

fn manifest_name(id: u64) -> String {
    format!("chk-{id:010}/manifest.json")
}

impl Remote {
    pub(crate) fn new(storage: Arc<dyn Storage>) -> Remote {
        Remote {
            storage,
            known: Mutex::new(None),
            newest: Mutex::new(None),
        }
    }

    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Ids of the complete checkpoints in the store, ascending.
    pub(crate) fn ids(&self) -> Result<Vec<u64>> {
        let ids = checkpoint_ids(self.storage.list("chk-")?.iter());
        let newest = ids.last().copied().unwrap_or(0);
        let mut known = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        *known = Some(known.unwrap_or(0).max(newest));
        Ok(ids)
    }

    /// Ids of the complete checkpoints in the store as this run knows them, ascending; `None`
    /// before its first look.
    pub(crate) fn known_ids(&self) -> Option<Vec<u64>> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.as_ref().map(|k| checkpoint_ids(k.iter()))
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

    /// What this host knows the store holds (listed at the first call).
    fn known(&self) -> Result<std::sync::MutexGuard<'_, Option<BTreeSet<String>>>> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.is_none() {
            *known = Some(self.storage.list("")?.into_iter().collect());
        }
        Ok(known)
    }

    fn note_stored(&self, name: &str) -> Result<()> {
        if let Some(k) = self.known()?.as_mut() {
            k.insert(name.to_string());
        }
        Ok(())
    }

    /// Uploads the files of `m` the store lacks (shared files once; the checkpoint's own files,
    /// if any, always) from the local directory `dir`; returns the bytes sent. A shared file
    /// whose put failed is not noted, so the next checkpoint that has it puts it again; if the
    /// failed put was stored all the same, it stays until a run's first listing finds it
    /// unused (a MANIFEST copy: at most 64 KiB).
    pub(crate) fn upload_files(&self, dir: &Path, m: &Manifest) -> Result<u64> {
        let stored: Vec<&crate::FileEntry> = {
            let known = self.known()?;
            m.files
                .iter()
                .filter(|f| {
                    !(f.stored.starts_with("shared/")
                        && known.as_ref().is_some_and(|k| k.contains(&f.stored)))
                })
                .collect()
        };
        in_parallel(&stored, TRANSFERS, |f| -> Result<()> {
            let put = self.storage.put_file(&f.stored, &dir.join(&f.stored));
            // A put that failed may have been stored all the same (its answer lost): a
            // checkpoint's own file is noted anyway, for retention to delete; a shared file is
            // noted only once stored, or a later checkpoint would count on it.
            if put.is_ok() || !f.stored.starts_with("shared/") {
                self.note_stored(&f.stored)?;
            }
            Ok(put?)
        })?;
        Ok(stored.iter().map(|f| f.size).sum())
    }

    /// Stores checkpoint `id`'s manifest: from now on the checkpoint exists.
    pub(crate) fn put_manifest(&self, id: u64, json: &[u8]) -> Result<()> {
        let put = self.storage.put_bytes(&manifest_name(id), json);
        // Noted even when the put failed, as its own files are: it may be stored all the same.
        self.note_stored(&manifest_name(id))?;
        put?;
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        *newest = Some(newest.unwrap_or(0).max(id));
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
        for name in self.storage.list(&own_prefix(id))? {
            self.storage.delete(&name)?;
        }
        if let Some(known) = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            known.retain(|n| !n.starts_with(&own_prefix(id)));
        }
        Ok(())
    }

    /// Keeps the checkpoints `choose` picks out of those this host knows in the store, and the
    /// shared files they use; deletes the rest of what it knows. `cached` gives a manifest
    /// from the local cache when it has it.
    ///
    /// Judged by what this host knows, not by a fresh listing: its own checkpoints are never
    /// missing from it (a replica behind would leave the newest out of a listing, and its
    /// files would look unused), and what appeared since its first look is left to its writer
    /// (another host's upload in flight: a partition's new owner, while this one, paused, has
    /// not noticed it lost it).
    pub(crate) fn retain(
        &self,
        choose: impl Fn(&[u64]) -> Result<HashSet<u64>>,
        cached: impl Fn(u64) -> Option<Manifest>,
    ) -> Result<()> {
        let mut guard = self.known()?;
        let Some(known) = guard.as_mut() else {
            return Ok(());
        };
        let (complete, keep, used) = loop {
            let ids = checkpoint_ids(known.iter());
            let keep = choose(&ids)?;
            let mut used = HashSet::new();
            let mut gone = None;
            for id in &keep {
                let m = match cached(*id) {
                    Some(m) => m,
                    None => match self.manifest(*id) {
                        Ok(m) => m,
                        // Deleted beside this host (`eddy checkpoints delete`), or never
                        // stored (a failed put): forget it and choose again; its own files,
                        // if any are left, go with the older checkpoints'.
                        Err(Error::Corrupt { .. }) if self.gone(&manifest_name(*id))? => {
                            gone = Some(*id);
                            break;
                        }
                        Err(e) => return Err(e),
                    },
                };
                used.extend(m.files.into_iter().map(|f| f.stored));
            }
            match gone {
                Some(id) => {
                    known.remove(&manifest_name(id));
                }
                None => break (ids, keep, used),
            }
        };
        // Checkpoints not kept: complete ones, and those that never completed (a host that
        // died mid-upload) older than the newest kept one; shared files no kept one uses.
        // Manifests first: a checkpoint without one never happened.
        let newest = keep.iter().max().copied().unwrap_or(0);
        let mut doomed: Vec<String> = known
            .iter()
            .filter(|name| match chk_id(name) {
                Some(id) => !keep.contains(&id) && (id < newest || complete.contains(&id)),
                None => name.starts_with("shared/") && !used.contains(*name),
            })
            .cloned()
            .collect();
        doomed.sort_by_key(|name| !name.ends_with("/manifest.json"));
        for name in doomed {
            self.storage.delete(&name)?;
            known.remove(&name);
        }
        Ok(())
    }

    /// Whether object `name` is gone from the store.
    fn gone(&self, name: &str) -> Result<bool> {
        match self.storage.get_bytes(name) {
            Err(StorageError::NotFound(_)) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(Error::Storage(e)),
        }
    }
}

/// The complete checkpoints among object names: those with a manifest, ascending.
fn checkpoint_ids<'a>(names: impl Iterator<Item = &'a String>) -> Vec<u64> {
    let mut ids: Vec<u64> = names
        .filter_map(|n| {
            n.strip_suffix("/manifest.json")?
                .strip_prefix("chk-")?
                .parse()
                .ok()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn own_prefix(id: u64) -> String {
    format!("chk-{id:010}/")
}

/// The checkpoint an object name belongs to (`chk-<id>/...`), if any.
fn chk_id(name: &str) -> Option<u64> {
    name.strip_prefix("chk-")?.split('/').next()?.parse().ok()
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
