//! Compiled functions kept between compiles, on disk: Cranelift's incremental cache. A
//! component that changed only in part compiles only the functions that changed and loads the
//! rest. That is what an edit of a Python or JavaScript plugin is: the interpreter's thousands
//! of functions stay as they were, the plugin's own code lives in the component's data.
//!
//! Cranelift names each entry by a hash of the function's content and the compilation
//! settings, so an entry only ever holds the code of that content; an entry that fails to load
//! is compiled again. Entries are written to a temporary file and renamed, as in
//! [`crate::cache`]. The directory is bounded: when a process first opens it, and after each
//! compile, past [`MAX_BYTES`] the least recently written entries go until half of that is
//! left.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Past this size the oldest entries are removed (a Python plugin's functions take ~35 MB).
pub(crate) const MAX_BYTES: u64 = 512 << 20;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct FunctionCache {
    dir: PathBuf,
    /// Names temporary files apart between threads of this process.
    written: AtomicU64,
}

impl FunctionCache {
    /// The cache in `dir` (created if missing), trimmed to its bound the first time this
    /// process opens it: a cluster host opens it once per partition run, and the walk over
    /// every entry need not be repeated.
    pub(crate) fn open(dir: PathBuf) -> FunctionCache {
        static TRIMMED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
        let _ = std::fs::create_dir_all(&dir);
        let mut trimmed = TRIMMED.lock().unwrap_or_else(|p| p.into_inner());
        if !trimmed.contains(&dir) {
            trim(&dir, MAX_BYTES, MAX_BYTES / 2);
            trimmed.push(dir.clone());
        }
        drop(trimmed);
        FunctionCache {
            dir,
            written: AtomicU64::new(0),
        }
    }

    /// `<dir>/<first two hex digits>/<hex of the key>`: a few hundred entries per directory.
    fn path(&self, key: &[u8]) -> PathBuf {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(hex.get(..2).unwrap_or("00")).join(hex)
    }
}

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        std::fs::read(self.path(key)).ok().map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let path = self.path(key);
        let Some(shard) = path.parent() else {
            return false;
        };
        let n = self.written.fetch_add(1, Ordering::Relaxed);
        let tmp = shard.join(format!(".{}-{n}.tmp", std::process::id()));
        let written = std::fs::create_dir_all(shard)
            .and_then(|()| std::fs::write(&tmp, &value))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.is_ok()
    }
}

/// Removes the least recently written entries of `dir` while it holds more than `max`
/// bytes, until `keep` bytes are left.
pub(crate) fn trim(dir: &Path, max: u64, keep: u64) {
    let mut entries = Vec::new();
    for shard in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        entries.extend(files_in(&shard.path(), |_| true));
    }
    remove_oldest(entries, max, keep);
}

/// The files of `dir` that `wanted` accepts by name: when each was last written, its size and
/// path.
pub(crate) fn files_in(
    dir: &Path,
    wanted: impl Fn(&str) -> bool,
) -> Vec<(std::time::SystemTime, u64, PathBuf)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(meta) = entry.metadata()
            && meta.is_file()
            && wanted(&entry.file_name().to_string_lossy())
        {
            let written = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            files.push((written, meta.len(), entry.path()));
        }
    }
    files
}

/// Removes the least recently written of `files` while they hold more than `max` bytes,
/// until `keep` bytes are left.
pub(crate) fn remove_oldest(
    mut files: Vec<(std::time::SystemTime, u64, PathBuf)>,
    max: u64,
    keep: u64,
) {
    let mut total: u64 = files.iter().map(|e| e.1).sum();
    if total <= max {
        return;
    }
    files.sort_by_key(|e| e.0);
    for (_, len, path) in files {
        if total <= keep {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_of(dir: &Path) -> u64 {
        let mut total = 0;
        for shard in std::fs::read_dir(dir).expect("dir").flatten() {
            for e in std::fs::read_dir(shard.path()).expect("shard").flatten() {
                total += e.metadata().expect("meta").len();
            }
        }
        total
    }

    #[test]
    fn entries_come_back_as_written_and_the_oldest_go_past_the_bound() {
        use wasmtime::CacheStore;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("functions");
        let cache = FunctionCache::open(dir.clone());
        assert!(cache.get(&[1, 2, 3]).is_none());
        for i in 0..10u8 {
            assert!(cache.insert(&[i; 32], vec![i; 1000]));
        }
        assert_eq!(cache.get(&[7; 32]).as_deref(), Some(&[7u8; 1000][..]));
        // Overwriting an entry leaves no temporary file behind.
        assert!(cache.insert(&[7; 32], vec![9; 1000]));
        assert_eq!(cache.get(&[7; 32]).as_deref(), Some(&[9u8; 1000][..]));
        assert_eq!(size_of(&dir), 10_000);

        // The first five written are older than the rest.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for i in 0..5u8 {
            let f = std::fs::File::options()
                .write(true)
                .open(cache.path(&[i; 32]))
                .expect("entry");
            f.set_modified(old).expect("mtime");
        }
        trim(&dir, 9_000, 5_000);
        assert_eq!(size_of(&dir), 5_000);
        for i in 0..5u8 {
            assert!(
                cache.get(&[i; 32]).is_none(),
                "entry {i} was among the oldest"
            );
        }
        for i in 5..10u8 {
            assert!(cache.get(&[i; 32]).is_some(), "entry {i} is kept");
        }
        // Under the bound nothing goes.
        trim(&dir, 9_000, 1_000);
        assert_eq!(size_of(&dir), 5_000);
    }
}
