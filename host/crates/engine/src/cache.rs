//! Compiled-component cache: a restart loads native code from disk instead of recompiling.
//!
//! Entries are named by the SHA-256 of the component bytes and the engine's compatibility
//! hash (wasmtime version and compilation settings), written to a temporary file and renamed,
//! so a reader never sees a half-written entry. A cache entry that fails to load is
//! recompiled and replaced. Within a process, one caller compiles an entry while the others
//! asking for it wait and then load it (a cluster host starting many partitions at once
//! compiles its plugin once, not once per partition).
//!
//! Bounded: every plugin version compiled adds an entry of a few to tens of MB (a reload, a
//! save in file-watch mode, a shadow), so after each compile the least recently used entries
//! go once the cache passes [`MAX_BYTES`] (a load marks an entry used), and the function cache
//! beside it is trimmed the same way.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context;
use wasmtime::component::Component;

/// Loads `wasm` from the cache in `dir`, or compiles and stores it.
pub(crate) fn load_or_compile(
    engine: &wasmtime::Engine,
    wasm: &[u8],
    digest: &str,
    dir: Option<&Path>,
) -> anyhow::Result<(Component, bool)> {
    let Some(dir) = dir else {
        return Ok((Component::new(engine, wasm)?, false));
    };
    let path = entry_path(engine, digest, dir);
    let entry = entry_lock(&path);
    let _compiling = entry.lock().unwrap_or_else(|p| p.into_inner());
    if path.is_file() {
        // SAFETY: the file was produced by `Component::serialize` of this same engine
        // configuration (its name includes the engine's compatibility hash) and written
        // atomically by this process or an earlier one; wasmtime also checks the header and
        // refuses a mismatched build.
        #[allow(unsafe_code)]
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => {
                mark_used(&path);
                return Ok((c, true));
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "recompiling: cached component unusable: {e:#}")
            }
        }
    }
    let component = Component::new(engine, wasm)?;
    if let Err(e) = store(&component, &path) {
        tracing::warn!(path = %path.display(), "could not cache the compiled component: {e:#}");
    }
    bound(dir);
    Ok((component, false))
}

/// Past this size the least recently used compiled components go, until half is left.
const MAX_BYTES: u64 = 1 << 30;

/// Keeps the cache in `dir` and its function cache within their bounds.
fn bound(dir: &Path) {
    bound_compiled(dir, MAX_BYTES, MAX_BYTES / 2);
    let functions = crate::function_cache::MAX_BYTES;
    crate::function_cache::trim(&dir.join("functions"), functions, functions / 2);
}

/// Removes the least recently used compiled components of `dir` while they hold more than
/// `max` bytes, until `keep` bytes are left.
fn bound_compiled(dir: &Path, max: u64, keep: u64) {
    let entries = crate::function_cache::files_in(dir, |name| name.ends_with(".cwasm"));
    crate::function_cache::remove_oldest(entries, max, keep);
}

/// Marks a cache entry as just used (its modification time), so trimming keeps it.
fn mark_used(path: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// The lock of one cache entry in this process.
fn entry_lock(path: &Path) -> std::sync::Arc<std::sync::Mutex<()>> {
    static LOCKS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<std::sync::Mutex<()>>>>,
    > = std::sync::OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    locks.entry(path.to_path_buf()).or_default().clone()
}

fn entry_path(engine: &wasmtime::Engine, digest: &str, dir: &Path) -> PathBuf {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    dir.join(format!("{digest}-{:016x}.cwasm", h.finish()))
}

fn store(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component.serialize()?;
    let dir = path.parent().context("cache path has a directory")?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reloads add an entry per version: past the bound the least recently used go, an old
    /// entry loaded just now stays, and nothing but compiled components is touched.
    #[test]
    fn the_least_recently_used_compiled_components_go_past_the_bound() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let entry = |i: u32| dir.join(format!("{i:064x}-0000000000000000.cwasm"));
        for i in 0..6 {
            std::fs::write(entry(i), vec![0u8; 1000]).expect("entry");
            if i < 4 {
                let f = std::fs::File::options()
                    .write(true)
                    .open(entry(i))
                    .expect("entry");
                f.set_modified(old + std::time::Duration::from_secs(u64::from(i)))
                    .expect("mtime");
            }
        }
        std::fs::write(dir.join("notes.txt"), vec![0u8; 5000]).expect("other file");
        mark_used(&entry(0));
        bound_compiled(dir, 5_500, 3_000);
        let kept: Vec<bool> = (0..6).map(|i| entry(i).exists()).collect();
        assert_eq!(kept, [true, false, false, false, true, true]);
        assert!(dir.join("notes.txt").exists());
        // Under the bound nothing goes.
        bound_compiled(dir, 5_500, 0);
        assert!(entry(0).exists() && entry(4).exists() && entry(5).exists());
    }
}
