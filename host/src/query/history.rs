//! Time-travel queries: state as of a retained checkpoint, by id or by time.
//!
//! Owns: what `as_of` means ([`AsOf`]), choosing the checkpoint it names, and the checkpoint
//! databases opened to answer from (a few, most recently used, each in its own directory
//! under `<state_dir>/as-of`).
//!
//! A checkpoint is opened by hard-linking its SST files from the checkpoint directory (after
//! fetching them from the checkpoint store if this host's cache lacks them: a partition
//! taken over, a wiped disk) and opening the result read-only. The links keep the files
//! alive when retention deletes the checkpoint meanwhile, so an open checkpoint answers until
//! it is evicted.
//!
//! Which checkpoints exist is decided by retention (`checkpoint.retain`, `retain_for_ms`,
//! `retain_every_ms`); a time before the oldest retained checkpoint is an error that says so.
//!
//! Never: writes to a checkpoint, or opens one on the run loop (callers are on the blocking
//! pool).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::QueryError;
use crate::checkpoint::{Checkpoints, Manifest};
use crate::state::{Clock, StateStore};

/// Which retained checkpoint a query reads.
///
/// On the wire: a number is a checkpoint id; a string is an id in digits, an RFC 3339 time
/// (`2026-12-03T10:02:00Z`; the newest checkpoint cut at or before it) or a duration ago
/// (`90s`, `10m`, `2h`, measured on the answering host's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
pub enum AsOf {
    /// The checkpoint with this id.
    Checkpoint(u64),
    /// The newest checkpoint cut at or before this time (ms since the Unix epoch).
    Time(u64),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Wire {
    Id(u64),
    Text(String),
}

impl TryFrom<Wire> for AsOf {
    type Error = String;
    fn try_from(w: Wire) -> Result<AsOf, String> {
        match w {
            Wire::Id(id) => Ok(AsOf::Checkpoint(id)),
            Wire::Text(t) => t.parse(),
        }
    }
}

impl From<AsOf> for Wire {
    fn from(a: AsOf) -> Wire {
        match a {
            AsOf::Checkpoint(id) => Wire::Id(id),
            AsOf::Time(ms) => Wire::Text(show_time(ms)),
        }
    }
}

impl std::str::FromStr for AsOf {
    type Err = String;
    fn from_str(s: &str) -> Result<AsOf, String> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(AsOf::Checkpoint)
                .map_err(|e| format!("`as_of` {s}: {e}"));
        }
        if let Ok(t) = humantime::parse_rfc3339_weak(s) {
            return Ok(AsOf::Time(millis(t)));
        }
        if let Ok(ago) = humantime::parse_duration(s) {
            let t = SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH);
            return Ok(AsOf::Time(millis(t)));
        }
        Err(format!(
            "`as_of` {s:?} is not a checkpoint id, an RFC 3339 time (2026-12-03T10:02:00Z) or a duration ago (10m)"
        ))
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A time in ms since the epoch as RFC 3339 (UTC, milliseconds).
pub fn show_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// How many checkpoint databases stay open at once.
const OPEN_AT_MOST: usize = 4;

/// The retained checkpoints of one pipeline (or partition) on this host, for queries.
pub struct TimeTravel {
    checkpoints: Arc<Checkpoints>,
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    /// Open checkpoints, most recently used last.
    open: Mutex<Vec<Arc<Opened>>>,
    /// Names the next directory (an evicted database may still be read by a query in flight,
    /// so a reopened checkpoint never reuses its directory).
    next: AtomicU64,
}

/// A checkpoint database opened for queries; its directory goes when the last reader does.
pub struct Opened {
    /// The checkpoint.
    pub manifest: Manifest,
    db: Option<StateStore>,
    dir: PathBuf,
}

impl Opened {
    /// The database.
    pub fn store(&self) -> &StateStore {
        self.db.as_ref().expect("open until dropped")
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        drop(self.db.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TimeTravel {
    /// Time-travel over `checkpoints`, opening them under `dir` (cleared first: what a
    /// previous run left there is not in use).
    pub fn new(checkpoints: Arc<Checkpoints>, dir: PathBuf, clock: Arc<dyn Clock>) -> TimeTravel {
        let _ = std::fs::remove_dir_all(&dir);
        TimeTravel {
            checkpoints,
            dir,
            clock,
            open: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        }
    }

    /// The checkpoint `as_of` names, opened.
    pub fn open(&self, as_of: AsOf) -> Result<Arc<Opened>, QueryError> {
        if let AsOf::Checkpoint(id) = as_of
            && let Some(o) = self.cached(id)
        {
            return Ok(o);
        }
        let manifest = self.choose(as_of)?;
        if let Some(o) = self.cached(manifest.id) {
            return Ok(o);
        }
        let id = manifest.id;
        let unavailable = |e: crate::checkpoint::Error| {
            QueryError::Unavailable(format!(
                "cannot open checkpoint {id} for the query ({e}); if retention removed it just now, ask for a newer one"
            ))
        };
        self.checkpoints.prefetch(id).map_err(unavailable)?;
        let dir = self.dir.join(format!(
            "chk-{id:010}-{}",
            self.next.fetch_add(1, Ordering::Relaxed)
        ));
        self.checkpoints
            .materialize(&manifest, &dir)
            .map_err(unavailable)?;
        let db = StateStore::open_read_only(&dir, self.clock.clone()).map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            QueryError::Internal(format!("cannot open checkpoint {id}: {e}"))
        })?;
        let opened = Arc::new(Opened {
            manifest,
            db: Some(db),
            dir,
        });
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = open.iter().position(|o| o.manifest.id == id) {
            // Another query opened it meanwhile: use theirs, drop ours.
            return Ok(open[i].clone());
        }
        if open.len() == OPEN_AT_MOST {
            open.remove(0);
        }
        open.push(opened.clone());
        Ok(opened)
    }

    fn cached(&self, id: u64) -> Option<Arc<Opened>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let i = open.iter().position(|o| o.manifest.id == id)?;
        let o = open.remove(i);
        open.push(o.clone());
        Some(o)
    }

    /// The retained checkpoint `as_of` names.
    fn choose(&self, as_of: AsOf) -> Result<Manifest, QueryError> {
        let retained = self.checkpoints.retained();
        let chosen = match as_of {
            AsOf::Checkpoint(id) => retained.iter().find(|m| m.id == id),
            AsOf::Time(t) => retained
                .iter()
                .filter(|m| m.created_ms <= t)
                .max_by_key(|m| (m.created_ms, m.id)),
        };
        if let Some(m) = chosen {
            return Ok(m.clone());
        }
        let r = self.checkpoints.retention();
        let kept = match retained.first() {
            Some(oldest) => format!(
                "{} checkpoints are retained, the oldest {} cut at {}",
                retained.len(),
                oldest.id,
                show_time(oldest.created_ms)
            ),
            None => "no checkpoint has completed yet".into(),
        };
        let asked = match as_of {
            AsOf::Checkpoint(id) => format!("no retained checkpoint {id}"),
            AsOf::Time(t) => format!("no retained checkpoint cut at or before {}", show_time(t)),
        };
        Err(QueryError::NotFound(format!(
            "{asked}: {kept} (checkpoint.retain = {}, retain_for_ms = {}, retain_every_ms = {}; `eddy checkpoints list` shows them)",
            r.count, r.for_ms, r.every_ms
        )))
    }
}
