//! Checkpoint cuts of the store: the state at one moment, written as a RocksDB checkpoint (an
//! openable database of hard-linked SST files).
//!
//! Owns how a cut is taken and written. [`StateStore::create_checkpoint`] does both at once:
//! the memtables are flushed and the files linked while the caller waits. A pipeline's run loop
//! cannot wait for a flush (tens of milliseconds with large state), nor for the deferred
//! writes (`hot`) to reach RocksDB (about a microsecond an entry, 20,000 entries a second for
//! 10,000 busy keys), so it takes the cut with [`StateStore::freeze`] in constant time and
//! has [`Frozen::write`] do the rest from another thread, while its own writes go on:
//!
//! - freeze: the hot values hand their dirty entries over whole (a swap, not a visit of each;
//!   they stay readable there), and the cut's *RocksDB part* is queued.
//! - the RocksDB part: the handed-over entries are written, a *cut marker* (the checkpoint id)
//!   is written, the memtables of all column families are switched without waiting for their
//!   flush (atomic flush: they flush together), and an *after-cut marker* is the first write
//!   into the new memtables. What was written before the switch is in the memtables now
//!   flushing; what is written after, in the new ones. Until it is done nothing else writes
//!   RocksDB: every other writer ([`StateStore::await_cut`]) waits for it, or does it itself if
//!   no thread has begun it. Commits whose writes all wait in the hot values (value and list
//!   state) do not touch RocksDB and go on meanwhile, so a cut does not pause them at all.
//! - write: waits until the flush is installed, then links the SST files without flushing
//!   again, and drops any write-ahead log file from the copy. Writes after the cut, in
//!   memtables only (the live database writes without a log), are not in the checkpoint,
//!   unless a memtable holding them was flushed meanwhile (it filled, or something flushed the
//!   store). Memtables flush oldest first, and every flush this store makes takes all column
//!   families together (atomic flush, all three named: `compact` and `flush` too), so such a
//!   flush always takes the after-cut marker with it: once the files are linked, the store's
//!   files must hold this cut's marker and its memtables the after-cut marker (a look at two
//!   keys, not an opening of the checkpoint). One that fails is removed and the error says
//!   why; the next freeze then writes its checkpoint at once, which nothing can race.
//! - The switch waits if it would stall writes (a flush already running with every spare
//!   memtable in use): each column family keeps three memtables so that a cut during one
//!   flush does not wait. RocksDB refuses a switch that does not wait while writes are
//!   stopped; that cut is written at once.
//! - A store with a write-ahead log always writes its checkpoint at the freeze: its log would
//!   carry writes after the cut into a checkpoint taken later.
//! - If writing the handed-over entries fails, they stay readable in the hot values and the
//!   RocksDB part stays queued: the next writer tries it again before its own write, as a
//!   failed settle leaves its entries dirty.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rocksdb::FlushOptions;

use crate::{Result, StateError, StateStore, hot};

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
    outcome: Arc<Outcome>,
}

/// How a cut's RocksDB part ended, once it has: `Ok(true)` if the checkpoint was written
/// there and then, `Ok(false)` if its memtables were switched and flush.
type Outcome = Mutex<Option<Result<bool>>>;

/// A cut's RocksDB part (see the module's notes), queued by the freeze.
#[derive(Debug)]
struct CutJob {
    id: u64,
    dir: PathBuf,
    handover: hot::Handover,
    /// Write the checkpoint right after the entries instead of switching memtables.
    at_once: bool,
    outcome: Arc<Outcome>,
}

/// The queue of at most one cut's RocksDB part, and whether a thread is doing it.
#[derive(Debug, Default)]
pub(crate) struct CutGate {
    state: Mutex<GateState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    job: Option<CutJob>,
    running: bool,
}

impl CutGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A cut's RocksDB part being done on this thread. However that ends (done, failed, or a
/// panic unwinding through it), the gate is opened again and its waiters woken; a job not done
/// goes back into the queue for the next writer.
struct Running<'a> {
    store: &'a StateStore,
    job: Option<CutJob>,
}

impl Running<'_> {
    fn run(mut self) -> Result<()> {
        let Some(job) = self.job.as_ref() else {
            return Ok(());
        };
        let result = self.store.run_cut(job);
        if result.is_ok() {
            // Dropped here, with the entries of the oldest kept cut it retired: off the run
            // loop when the checkpoint's writer does the job.
            self.job = None;
        }
        result
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut gate = self.store.cuts.lock();
        gate.running = false;
        if let Some(job) = self.job.take() {
            gate.job = Some(job);
        }
        self.store.cuts.done.notify_all();
    }
}

/// Set (to anything) to do every cut's RocksDB part inside the freeze, as a cut that pauses
/// its caller: for comparing the two in benchmarks.
const SYNC_CUTS_ENV: &str = "EDDY_SYNC_CUTS";

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
    /// [`Frozen::write`], from any thread: writes made after this returns are not in it.
    /// Constant time unless a cut's RocksDB part is still pending (it is done first), the store
    /// has a write-ahead log or the previous cut failed (then the checkpoint is written here;
    /// see the module's notes).
    pub fn freeze(&self, id: u64, dir: &Path) -> Result<Frozen> {
        let _writing = self.writing();
        self.await_cut()?;
        let at_once = self.write_ahead_log || self.flush_at_cut.swap(false, Ordering::Relaxed);
        let handover = self.hot().take_dirty();
        self.judge_deferring(handover.deferred, handover.entries.len() as u64);
        let outcome = Arc::new(Mutex::new(None));
        self.cuts.lock().job = Some(CutJob {
            id,
            dir: dir.to_path_buf(),
            handover,
            at_once,
            outcome: outcome.clone(),
        });
        if at_once || std::env::var_os(SYNC_CUTS_ENV).is_some() {
            self.await_cut()?;
        }
        Ok(Frozen {
            id,
            dir: dir.to_path_buf(),
            outcome,
        })
    }

    /// Waits until no cut's RocksDB part is pending, doing it on this thread if no other has
    /// begun it. Every RocksDB write but a cut's own comes after this (see the module's notes).
    pub(crate) fn await_cut(&self) -> Result<()> {
        let mut gate = self.cuts.lock();
        loop {
            if let Some(job) = gate.job.take() {
                gate.running = true;
                drop(gate);
                return Running {
                    store: self,
                    job: Some(job),
                }
                .run();
            }
            if !gate.running {
                return Ok(());
            }
            gate = self.cuts.done.wait(gate).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Does a cut's RocksDB part. Fails only if its entries cannot be written (they stay
    /// readable in the hot values, and the job is tried again).
    fn run_cut(&self, job: &CutJob) -> Result<()> {
        let count = job.handover.entries.len() as u64;
        if count > 0 {
            let cf = self.keyed_cf();
            let mut wb = rocksdb::WriteBatch::default();
            for (k, v) in hot::sorted(&job.handover.entries) {
                wb.put_cf(cf, k, v);
            }
            if let Err(e) = self.db.write_opt(wb, &self.write_opts) {
                *lock(&job.outcome) = Some(Err(StateError::Incompatible(format!(
                    "the cut's deferred writes were not written: {e}"
                ))));
                return Err(StateError::Storage(e));
            }
            job.handover.written.store(true, Ordering::Release);
            self.stats
                .deferred_writes
                .fetch_add(job.handover.deferred, Ordering::Relaxed);
            self.stats
                .settled_writes
                .fetch_add(count, Ordering::Relaxed);
        }
        // A cut whose `Frozen` is gone (given up, or dropped unwritten) needs its entries
        // written and nothing more: no marker, no switch, no checkpoint.
        if Arc::strong_count(&job.outcome) > 1 {
            let switched = self.switch_at_cut(job.id, &job.dir, job.at_once);
            *lock(&job.outcome) = Some(switched);
        }
        Ok(())
    }

    /// Marks cut `id` and switches the memtables (`Ok(false)`), or writes its checkpoint into
    /// `dir` now (`Ok(true)`).
    fn switch_at_cut(&self, id: u64, dir: &Path, at_once: bool) -> Result<bool> {
        let stamp = id.to_be_bytes();
        let meta = self.meta_cf();
        let mut now = at_once;
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
        Ok(now)
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

    /// Writes the cut into its directory: does its RocksDB part if no thread has begun it
    /// (and a later cut's too, if one was frozen meanwhile: this cut's check then fails),
    /// waits for its flush, links the files, and checks that the checkpoint holds exactly the
    /// cut. On failure nothing is left in the directory and the store's next freeze writes at
    /// once.
    pub fn write(self, store: &StateStore) -> Result<()> {
        let switched = store.await_cut().and_then(|()| {
            lock(&self.outcome).take().unwrap_or_else(|| {
                Err(StateError::CutRaced(format!(
                    "cut {} was not done in RocksDB",
                    self.id
                )))
            })
        });
        let written = switched.and_then(|at_once| {
            if at_once {
                return Ok(());
            }
            store.wait_for_flush()?;
            let cp = rocksdb::checkpoint::Checkpoint::new(&store.db)?;
            // No flush: the memtables hold only writes after the cut.
            cp.create_checkpoint_with_log_size(&self.dir, u64::MAX)?;
            drop_logs(&self.dir)?;
            store.check_linked(self.id)
        });
        if written.is_err() {
            store.flush_at_cut.store(true, Ordering::Relaxed);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        written
    }
}

fn lock(outcome: &Outcome) -> MutexGuard<'_, Option<Result<bool>>> {
    outcome.lock().unwrap_or_else(|p| p.into_inner())
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

impl StateStore {
    /// Checks, once cut `id`'s files are linked, that they hold the cut and nothing written
    /// after it, without opening them. That they hold the cut comes from the wait for its
    /// flush before the link; this confirms the cut marker is in the store's files (not a
    /// later cut's). The after-cut marker, the first write after the switch, must still be in
    /// a memtable: flushes take the oldest memtables of every column family together (atomic
    /// flush), so no write after the cut had reached a file when the files were linked.
    fn check_linked(&self, id: u64) -> Result<()> {
        let stamp = id.to_be_bytes();
        let meta = self.meta_cf();
        let mut persisted = rocksdb::ReadOptions::default();
        persisted.set_read_tier(rocksdb::ReadTier::Persisted);
        if self.db.get_cf_opt(meta, META_CUT, &persisted)?.as_deref() != Some(&stamp[..]) {
            return Err(StateError::CutRaced(format!(
                "checkpoint {id} lacks its own cut: the flush it waited for did not hold it"
            )));
        }
        let mut memtables = rocksdb::ReadOptions::default();
        memtables.set_read_tier(rocksdb::ReadTier::Memtable);
        let mut it = self.db.raw_iterator_cf_opt(meta, memtables);
        it.seek(META_AFTER_CUT);
        let unflushed =
            it.valid() && it.key() == Some(META_AFTER_CUT) && it.value() == Some(&stamp[..]);
        it.status()?;
        if !unflushed {
            return Err(StateError::CutRaced(format!(
                "writes made after checkpoint {id}'s cut were flushed before its files were linked"
            )));
        }
        Ok(())
    }
}
