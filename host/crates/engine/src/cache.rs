//! Compiled-component cache: a restart loads native code from disk instead of recompiling.
//!
//! Entries are named by the SHA-256 of the component bytes and the engine's compatibility
//! hash (wasmtime version and compilation settings), written to a temporary file and renamed,
//! so a reader never sees a half-written entry. A cache entry that fails to load is
//! recompiled and replaced. Within a process, one caller compiles an entry while the others
//! asking for it wait and then load it (a cluster host starting many partitions at once
//! compiles its plugin once, not once per partition).

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
            Ok(c) => return Ok((c, true)),
            Err(e) => {
                tracing::warn!(path = %path.display(), "recompiling: cached component unusable: {e:#}")
            }
        }
    }
    let component = Component::new(engine, wasm)?;
    if let Err(e) = store(&component, &path) {
        tracing::warn!(path = %path.display(), "could not cache the compiled component: {e:#}");
    }
    Ok((component, false))
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
