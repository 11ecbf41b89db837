//! Restoring a checkpoint: verifying its files against the manifest, choosing the newest one
//! that verifies (falling back past corrupt ones only), and building a database directory
//! from it.

use std::path::Path;

use crate::{Checkpoints, Error, IoContext, Manifest, Result, link_or_copy, list_ids, sha256_file};

impl Checkpoints {
    /// Checks that every file of `m` is present with its size and checksum: a file missing
    /// or different is [`Error::Corrupt`], a file that cannot be read is [`Error::Io`].
    pub fn verify(&self, m: &Manifest) -> Result<()> {
        let corrupt = |reason: String| Error::Corrupt { id: m.id, reason };
        for f in &m.files {
            let path = self.dir.join(&f.stored);
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(corrupt(format!("file {} is missing", f.stored)));
                }
                Err(source) => {
                    return Err(Error::Io {
                        what: format!("stat {}", path.display()),
                        source,
                    });
                }
            };
            if meta.len() != f.size {
                return Err(corrupt(format!(
                    "file {} has {} bytes, the manifest says {}",
                    f.stored,
                    meta.len(),
                    f.size
                )));
            }
            if sha256_file(&path)? != f.sha256 {
                return Err(corrupt(format!("file {} fails its checksum", f.stored)));
            }
        }
        Ok(())
    }

    /// Rebuilds `db_dir` from the newest checkpoint that verifies, falling back to older ones
    /// when one is corrupt (with a warning naming what was wrong). Any other error (I/O, a
    /// newer manifest format) stops the restore: an older checkpoint would silently lose
    /// progress the newest one may still hold. `None` if there is no checkpoint: the pipeline
    /// starts from empty state at the beginning of its inputs.
    pub fn restore_newest(&self, db_dir: &Path) -> Result<Option<Manifest>> {
        self.restore_up_to(db_dir, None)
    }

    /// [`Checkpoints::restore_newest`] among the checkpoints with ids up to `max` (the one a
    /// partition's checkpoint pointer names, in cluster mode: newer ones were never
    /// committed). With a store, `max` itself is tried first without listing the store.
    pub fn restore_up_to(&self, db_dir: &Path, max: Option<u64>) -> Result<Option<Manifest>> {
        let mut skipped = Vec::new();
        // Restores `id` if it verifies; `None` (noted in `skipped`) if it is corrupt.
        let mut attempt = |id: u64| -> Result<Option<Manifest>> {
            let usable = match &self.remote {
                Some(remote) => remote.fetch(&self.dir, id),
                None => self.load(id),
            };
            match usable.and_then(|m| self.verify(&m).map(|()| m)) {
                Ok(m) => {
                    self.materialize(&m, db_dir)?;
                    Ok(Some(m))
                }
                Err(e @ Error::Corrupt { .. }) => {
                    tracing::warn!(checkpoint = id, "{e}; falling back to the previous one");
                    skipped.push(id);
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        };
        let mut restored = None;
        if let (Some(_), Some(max)) = (&self.remote, max) {
            restored = attempt(max)?;
        }
        if restored.is_none() {
            let mut ids = match &self.remote {
                Some(remote) => remote.ids()?,
                None => list_ids(&self.dir, true),
            };
            if let Some(max) = max {
                ids.retain(|id| *id <= max);
            }
            for id in ids.into_iter().rev() {
                if restored.is_some() {
                    break;
                }
                if self.remote.is_some() && Some(id) == max {
                    continue;
                }
                restored = attempt(id)?;
            }
        }
        match restored {
            Some(m) => {
                if !skipped.is_empty() {
                    tracing::warn!(
                        restored = m.id,
                        skipped = ?skipped,
                        "restored an older checkpoint because newer ones are corrupt"
                    );
                }
                Ok(Some(m))
            }
            None if !skipped.is_empty() => Err(Error::AllCorrupt {
                dir: self.dir.clone(),
                ids: skipped,
            }),
            None => Ok(None),
        }
    }

    /// Fetches checkpoint `id` from the store into the local cache without restoring it (a
    /// host about to take a partition over), so the restore that follows downloads only
    /// what changed since. Without a store there is nothing to fetch.
    pub fn prefetch(&self, id: u64) -> Result<()> {
        if let Some(remote) = &self.remote {
            remote.fetch(&self.dir, id)?;
        }
        Ok(())
    }

    /// Writes the database of checkpoint `m` into `db_dir` (replacing what is there). On
    /// failure (a file gone from the cache) `db_dir` is removed: a partial database is of no
    /// use, and its links would keep deleted files on disk.
    pub fn materialize(&self, m: &Manifest, db_dir: &Path) -> Result<()> {
        let written = self.write_db(m, db_dir);
        if written.is_err() {
            let _ = std::fs::remove_dir_all(db_dir);
        }
        written
    }

    fn write_db(&self, m: &Manifest, db_dir: &Path) -> Result<()> {
        if db_dir.exists() {
            std::fs::remove_dir_all(db_dir).doing(|| format!("clear {}", db_dir.display()))?;
        }
        std::fs::create_dir_all(db_dir).doing(|| format!("create {}", db_dir.display()))?;
        for f in &m.files {
            let from = self.dir.join(&f.stored);
            let to = db_dir.join(&f.name);
            if f.name.ends_with(".sst") {
                link_or_copy(&from, &to)?;
            } else {
                // RocksDB may append to MANIFEST files: never share them with the checkpoint.
                std::fs::copy(&from, &to)
                    .doing(|| format!("copy {} to {}", from.display(), to.display()))?;
            }
        }
        Ok(())
    }
}
