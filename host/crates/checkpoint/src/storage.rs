//! Where checkpoints are kept beyond the host's own disk: a flat namespace of immutable
//! objects, written whole, behind one trait so the checkpoint code does not know which store
//! it talks to. The host provides the NATS object store and S3 backends; [`DirStorage`], a
//! directory (a mounted shared file system, or a test's temporary directory), lives here.
//!
//! Names are `/`-separated paths relative to the pipeline's prefix in the store:
//! `shared/<sha256:16>-<name>`, `chk-<id>/manifest.json`, and `chk-<id>/files/<name>` (written
//! by older versions, still read). An
//! object is never rewritten once its checkpoint is complete; the manifest is written last.
//!
//! Calls block: the checkpoint code runs on blocking threads, and async backends wait on their
//! runtime there.

use std::path::{Path, PathBuf};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object of that name.
    #[error("{0} is not in the store")]
    NotFound(String),
    /// The store could not be reached or refused the call; the message names the store, the
    /// object and the cause.
    #[error("{0}")]
    Failed(String),
}

/// A store of checkpoint objects.
pub trait Storage: Send + Sync {
    /// The store for people: `NATS object store eddy-checkpoints`, `s3://bucket/prefix`.
    fn describe(&self) -> String;
    /// Stores the file at `path` as `name`.
    fn put_file(&self, name: &str, path: &Path) -> Result<(), StorageError>;
    /// Stores `bytes` as `name`.
    fn put_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError>;
    /// Writes object `name` to `path` (through a temporary file beside it).
    fn get_file(&self, name: &str, path: &Path) -> Result<(), StorageError>;
    /// Object `name`'s bytes.
    fn get_bytes(&self, name: &str) -> Result<Vec<u8>, StorageError>;
    /// Names of the objects starting with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// Deletes object `name` (no error if it is gone already).
    fn delete(&self, name: &str) -> Result<(), StorageError>;
}

/// A directory as a store.
pub struct DirStorage {
    dir: PathBuf,
}

impl DirStorage {
    /// Objects under `dir` (created when first written).
    pub fn new(dir: &Path) -> DirStorage {
        DirStorage {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn failed(&self, what: &str, name: &str, e: std::io::Error) -> StorageError {
        if e.kind() == std::io::ErrorKind::NotFound {
            StorageError::NotFound(name.to_string())
        } else {
            StorageError::Failed(format!("{what} {}: {e}", self.path(name).display()))
        }
    }
}

/// A temporary name beside `path`, to write it whole before a rename: unique per write, so
/// two writers of the same file (a fetch ahead still running on the blocking pool, and the
/// restore that followed it) never write through one.
pub fn temporary_beside(path: &Path) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".part-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

fn write_through_tmp(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = temporary_beside(path);
    write(&tmp)?;
    std::fs::rename(&tmp, path)
}

impl Storage for DirStorage {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    fn put_file(&self, name: &str, path: &Path) -> Result<(), StorageError> {
        write_through_tmp(&self.path(name), |tmp| std::fs::copy(path, tmp).map(drop))
            .map_err(|e| self.failed("write", name, e))
    }

    fn put_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        write_through_tmp(&self.path(name), |tmp| std::fs::write(tmp, bytes))
            .map_err(|e| self.failed("write", name, e))
    }

    fn get_file(&self, name: &str, path: &Path) -> Result<(), StorageError> {
        let from = self.path(name);
        if !from.is_file() {
            return Err(StorageError::NotFound(name.to_string()));
        }
        write_through_tmp(path, |tmp| std::fs::copy(&from, tmp).map(drop))
            .map_err(|e| self.failed("read", name, e))
    }

    fn get_bytes(&self, name: &str) -> Result<Vec<u8>, StorageError> {
        std::fs::read(self.path(name)).map_err(|e| self.failed("read", name, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        let mut todo = vec![self.dir.clone()];
        while let Some(dir) = todo.pop() {
            let read = match std::fs::read_dir(&dir) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StorageError::Failed(format!("list {}: {e}", dir.display())));
                }
            };
            for entry in read.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    todo.push(path);
                } else if let Ok(rel) = path.strip_prefix(&self.dir) {
                    let name = rel.to_string_lossy().replace('\\', "/");
                    if name.starts_with(prefix) && !name.contains(".part-") {
                        out.push(name);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        match std::fs::remove_file(self.path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.failed("delete", name, e)),
        }
    }
}
