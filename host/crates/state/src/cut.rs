//! Checkpoint cuts of the store: the state at one moment, written as a RocksDB checkpoint (an
//! openable database of hard-linked SST files).
//!
//! Owns how a cut is taken and written. [`StateStore::create_checkpoint`] does both at once:
//! the memtables are flushed and the files linked while the caller waits. A pipeline's run loop
//! cannot wait for a flush (tens of milliseconds with large state), so it takes the cut with
//! [`StateStore::freeze`] in about a millisecond and has [`Frozen::write`] write it later from
//! another thread, while its writes go on:
//!
//! - freeze: the deferred writes are settled, a *cut marker* (the checkpoint id) is written,
//!   the memtables of all column families are switched without waiting for their flush (atomic
//!   flush: they flush together), and an *after-cut marker* is the first write into the new
//!   memtables. What was written before the switch is in the memtables now flushing; what is
//!   written after, in the new ones.
//! - write: waits until the flush is installed, then links the SST files without flushing
//!   again, and drops any write-ahead log file from the copy. Writes after the cut, in
//!   memtables only (the live database writes without a log), are not in the checkpoint,
//!   unless a memtable holding them was flushed meanwhile (it filled, or something flushed the
//!   store). Memtables flush oldest first, and every flush this store makes takes all column
//!   families together (atomic flush, all three named: `compact` and `flush` too), so such a
//!   flush always takes the after-cut marker with it: the checkpoint is opened and must hold
//!   this cut's marker and not its after-cut marker. One that fails is removed and the error
//!   says why; the next freeze then writes its checkpoint while its caller waits, which
//!   nothing can race.
//! - The freeze waits if switching the memtables would stall writes (a flush already running
//!   with every spare memtable in use): each column family keeps three memtables so that a cut
//!   during one flush does not wait. RocksDB refuses a switch that does not wait while writes
//!   are stopped; that cut is written at once.
//! - A store with a write-ahead log always writes its checkpoint at the freeze: its log would
//!   carry writes after the cut into a checkpoint taken later.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rocksdb::{DB, FlushOptions, Options};

use crate::{CF_BROADCAST, CF_KEYED, CF_META, Result, StateError, StateStore};

/// Meta key: the id of the newest cut frozen in the database.
const META_CUT: &[u8] = b"cut/frozen";
/// Meta key: the id of the newest cut whose later writes have begun.
const META_AFTER_CUT: &[u8] = b"cut/after";

/// How long [`Frozen::write`] waits for the cut's flush before giving the checkpoint up.
const FLUSH_WAIT: Duration = Duration::from_secs(60);

/// A cut taken by [`StateStore::freeze`], to be written with [`Frozen::write`].
#[derive(Debug)]
pub struct Frozen {
    id: u64,
    dir: PathBuf,
    /// Written already (at the freeze): `write` has nothing left to do.
    written: bool,
}

impl StateStore {
    /// Writes a RocksDB checkpoint of the whole database into `dir` (which must not exist):
    /// memtables are flushed, SST files hard-linked, the small metadata files copied. The
    /// checkpoint is itself an openable database.
    pub fn create_checkpoint(&self, dir: &Path) -> Result<()> {
        self.settle()?;
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        cp.create_checkpoint(dir)?;
        Ok(())
    }

    /// Takes cut `id` of the database, to be written into `dir` (which must not exist) by
    /// [`Frozen::write`], from any thread: writes made after this returns are not in it. Cheap
    /// unless the store has a write-ahead log or the previous deferred write failed: then the
    /// checkpoint is written here (see the module's notes).
    pub fn freeze(&self, id: u64, dir: &Path) -> Result<Frozen> {
        let _writing = self.writing();
        self.settle_held()?;
        let stamp = id.to_be_bytes();
        let meta = self.meta_cf();
        let mut now = self.write_ahead_log || self.flush_at_cut.swap(false, Ordering::Relaxed);
        if !now {
            self.db
                .put_cf_opt(meta, META_CUT, stamp, &self.write_opts)?;
            let mut flush = FlushOptions::default();
            flush.set_wait(false);
            let cfs = [self.keyed_cf(), self.broadcast_cf(), meta];
            match self.db.flush_cfs_opt(&cfs, &flush) {
                Ok(()) => {
                    self.db
                        .put_cf_opt(meta, META_AFTER_CUT, stamp, &self.write_opts)?;
                }
                // RocksDB refuses a flush that does not wait while writes are stopped (too
                // many level-0 files): this cut is written at once instead.
                Err(e) => {
                    tracing::debug!(checkpoint = id, "cut written at once: {e}");
                    now = true;
                }
            }
        }
        if now {
            let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
            cp.create_checkpoint(dir)?;
        }
        Ok(Frozen {
            id,
            dir: dir.to_path_buf(),
            written: now,
        })
    }

    /// Waits until no memtable awaits its flush.
    fn wait_for_flush(&self) -> Result<()> {
        let cfs = [self.keyed_cf(), self.broadcast_cf(), self.meta_cf()];
        let deadline = Instant::now() + FLUSH_WAIT;
        let mut pause = Duration::from_micros(200);
        loop {
            let mut waiting = 0;
            for cf in cfs {
                waiting += self
                    .db
                    .property_int_value_cf(cf, "rocksdb.num-immutable-mem-table")?
                    .unwrap_or(0);
            }
            if waiting == 0 {
                return Ok(());
            }
            let failed = self
                .db
                .property_int_value("rocksdb.background-errors")?
                .unwrap_or(0);
            if failed > 0 {
                return Err(StateError::Incompatible(format!(
                    "RocksDB reports {failed} failed background jobs: the cut's flush did not finish (is the disk full?)"
                )));
            }
            if Instant::now() >= deadline {
                return Err(StateError::CutRaced(format!(
                    "{waiting} memtables still await their flush after {FLUSH_WAIT:?}"
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl Frozen {
    /// The cut's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Writes the cut into its directory: waits for its flush, links the files, and checks
    /// that the checkpoint holds exactly the cut. On failure nothing is left in the directory
    /// and the store's next freeze writes at once.
    pub fn write(self, store: &StateStore) -> Result<()> {
        if self.written {
            return Ok(());
        }
        let written = store.wait_for_flush().and_then(|()| {
            let cp = rocksdb::checkpoint::Checkpoint::new(&store.db)?;
            // No flush: the memtables hold only writes after the cut.
            cp.create_checkpoint_with_log_size(&self.dir, u64::MAX)?;
            drop_logs(&self.dir)?;
            check(&self.dir, self.id)
        });
        if written.is_err() {
            store.flush_at_cut.store(true, Ordering::Relaxed);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        written
    }
}

/// Removes the write-ahead log files RocksDB copied into the checkpoint in `dir`: everything
/// written before the cut is in its SST files by now, so a log could only carry writes made
/// after it (the store writes without a log, but nothing should depend on every writer
/// remembering that).
fn drop_logs(dir: &Path) -> Result<()> {
    let io = |e: std::io::Error| {
        StateError::Incompatible(format!("cannot list the checkpoint {}: {e}", dir.display()))
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|x| x == "log") {
            std::fs::remove_file(&path).map_err(io)?;
        }
    }
    Ok(())
}

/// Checks that the checkpoint in `dir` holds cut `id` and nothing written after it.
fn check(dir: &Path, id: u64) -> Result<()> {
    let db = DB::open_cf_for_read_only(
        &Options::default(),
        dir,
        [CF_KEYED, CF_BROADCAST, CF_META],
        false,
    )?;
    let meta = db
        .cf_handle(CF_META)
        .ok_or_else(|| StateError::Corrupt("no meta column family".into()))?;
    let stamp = id.to_be_bytes();
    if db.get_cf(meta, META_CUT)?.as_deref() != Some(&stamp[..]) {
        return Err(StateError::CutRaced(format!(
            "checkpoint {id} lacks its own cut: the flush it waited for did not hold it"
        )));
    }
    if db.get_cf(meta, META_AFTER_CUT)?.as_deref() == Some(&stamp[..]) {
        return Err(StateError::CutRaced(format!(
            "writes made after checkpoint {id}'s cut were flushed before its files were linked"
        )));
    }
    Ok(())
}
