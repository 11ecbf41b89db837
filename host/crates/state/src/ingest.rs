//! State built in bulk: entries sorted and written into SST files beside the store, then
//! ingested whole, so they pass through neither the memtable nor the write path, and leave
//! no memtable memory behind. Files that overlap nothing go straight to the bottom level;
//! overlapping ones (a savepoint restored into another number of key groups) land in level
//! 0, and the ingest compacts them down before it ends rather than leave reads and writes to
//! a pile of level-0 files.
//!
//! Owns the staging directory `<state>/ingest/`, removed when the ingest ends (or is dropped).

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{IngestExternalFileOptions, Options, SstFileWriter};

use crate::{Result, StateError, StateStore};

/// Entries as stored: key and value bytes, keyed (`layout`) or broadcast (`broadcast`).
pub type RawEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// An SST file written and waiting to be ingested.
struct Staged {
    path: PathBuf,
    first: Vec<u8>,
    last: Vec<u8>,
    broadcast: bool,
}

/// Files being built for one ingestion into a store; several threads may add at once.
pub struct Ingest<'a> {
    store: &'a StateStore,
    dir: PathBuf,
    keyed_options: Options,
    broadcast_options: Options,
    staged: Mutex<Vec<Staged>>,
    next: AtomicU64,
}

impl StateStore {
    /// Starts building entries in bulk into this store (see [`Ingest`]).
    pub fn ingest(&self) -> Result<Ingest<'_>> {
        let dir = self.path.join("ingest");
        if dir.exists() {
            // Left by an ingest that a crash interrupted: nothing in it was ingested.
            std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        Ok(Ingest {
            store: self,
            dir,
            keyed_options: crate::keyed_file_options(),
            broadcast_options: crate::broadcast_file_options(),
            staged: Mutex::default(),
            next: AtomicU64::new(0),
        })
    }
}

impl Ingest<'_> {
    /// Sorts `entries` (keyed, or broadcast) and writes them into an SST file of their own. Of
    /// two entries with the same key, the later one is kept, as two writes would leave it.
    pub fn add(&self, mut entries: RawEntries, broadcast: bool) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        // Stable, so that of equal keys the later stays after the earlier.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(&mut later.1, &mut kept.1);
            }
            same
        });
        let path = self.dir.join(format!(
            "{:06}.sst",
            self.next.fetch_add(1, Ordering::Relaxed)
        ));
        let options = if broadcast {
            &self.broadcast_options
        } else {
            &self.keyed_options
        };
        let mut writer = SstFileWriter::create(options);
        writer.open(&path)?;
        for (k, v) in &entries {
            writer.put(k, v)?;
        }
        writer.finish()?;
        let (first, last) = (entries[0].0.clone(), entries[entries.len() - 1].0.clone());
        self.staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Staged {
                path,
                first,
                last,
                broadcast,
            });
        Ok(())
    }

    /// Ingests every file added, in one step per column family, later files over earlier
    /// ones where keys repeat; then, if any two files overlapped, compacts the column family
    /// so nothing stays in level 0. Hot values are settled before and forgotten after, as
    /// for any write behind the commit path.
    pub fn finish(self) -> Result<()> {
        let staged = std::mem::take(&mut *self.staged.lock().unwrap_or_else(|p| p.into_inner()));
        let store = self.store;
        let _writing = store.writing();
        {
            let mut hot = store.hot();
            store.settle_locked(&mut hot)?;
            hot.forget_all();
        }
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        for broadcast in [false, true] {
            let cf = if broadcast {
                store.broadcast_cf()
            } else {
                store.keyed_cf()
            };
            let files: Vec<&Staged> = staged.iter().filter(|s| s.broadcast == broadcast).collect();
            if files.is_empty() {
                continue;
            }
            let mut ranges: Vec<(&[u8], &[u8])> = files
                .iter()
                .map(|s| (s.first.as_slice(), s.last.as_slice()))
                .collect();
            ranges.sort();
            let overlap = ranges.windows(2).any(|w| w[0].1 >= w[1].0);
            let paths: Vec<&PathBuf> = files.iter().map(|s| &s.path).collect();
            store.db.ingest_external_file_cf_opts(cf, &opts, paths)?;
            if overlap {
                store.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
            }
        }
        // A reader that filled a hot value from RocksDB between the forgetting above and the
        // ingestion would hold what the ingestion replaced.
        store.hot().forget_all();
        Ok(())
    }
}

impl Drop for Ingest<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn io(path: &std::path::Path, e: std::io::Error) -> StateError {
    StateError::Incompatible(format!(
        "cannot prepare {} for a bulk ingest: {e}; check the state directory's permissions and free space",
        path.display()
    ))
}
