//! The checkpoint manifest (`chk-<id>/manifest.json`): what a checkpoint records (its cut and
//! its files), and reading one safely from disk or a store.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Version of the manifest format this host writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// What a checkpoint records besides its files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cut {
    /// Position of every input: all its events up to here are in the state.
    pub positions: BTreeMap<String, u64>,
    /// Per input, events after its position that are in the state too (handled out of order
    /// while waiting on lookups): skipped when replayed.
    #[serde(default)]
    pub done_after: BTreeMap<String, Vec<u64>>,
    /// The plugin version that produced the state.
    pub plugin_version: String,
    /// Outputs published up to the cut (a count, for inspection).
    #[serde(default)]
    pub outputs: u64,
}

/// One file of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Its name in the database directory.
    pub name: String,
    /// Where it is stored, relative to the checkpoint directory.
    pub stored: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// A completed checkpoint's `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format.
    pub format: u32,
    /// Increasing id.
    pub id: u64,
    /// The pipeline's name.
    pub pipeline: String,
    /// When the cut was taken, ms since the Unix epoch.
    pub created_ms: u64,
    /// Key groups of the state.
    pub key_groups: u32,
    /// Positions, plugin version, outputs.
    #[serde(flatten)]
    pub cut: Cut,
    /// Every file of the database at the cut.
    pub files: Vec<FileEntry>,
    /// Bytes of the database at the cut.
    pub total_bytes: u64,
    /// Bytes this checkpoint added to `shared/` (its incremental size).
    pub new_bytes: u64,
    /// Milliseconds the pipeline waited for the cut.
    pub cut_ms: u64,
    /// Milliseconds from cut to manifest.
    pub complete_ms: u64,
    /// Bytes sent to the checkpoint store beyond this host (0 without one).
    #[serde(default)]
    pub uploaded_bytes: u64,
}

impl Manifest {
    /// Reads a manifest (checkpoint `id`'s, found at `place`, for the error): valid JSON of a
    /// format this build knows, naming only files it may touch. Manifests come from disk or a
    /// store other hosts and tools write to: a `name` or `stored` path such as `../x` or
    /// `/etc/x` would have a restore read, link or write files anywhere the host can.
    pub fn parse(id: u64, bytes: &[u8], place: &str) -> Result<Manifest> {
        let corrupt = |reason: String| Error::Corrupt { id, reason };
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(format!("{place} is not valid ({e})")))?;
        if m.format > MANIFEST_FORMAT {
            return Err(Error::Format {
                id,
                format: m.format,
            });
        }
        for f in &m.files {
            if !within(&f.name, 1) || !within(&f.stored, usize::MAX) {
                return Err(corrupt(format!(
                    "{place} names a file outside the checkpoint (name {:?}, stored {:?}): written by something other than Eddy, or tampered with",
                    f.name, f.stored
                )));
            }
        }
        Ok(m)
    }
}

/// Whether `path` is relative, made of at most `depth` plain names (no `..`, `.`, root or
/// prefix), and not empty.
pub(crate) fn within(path: &str, depth: usize) -> bool {
    let mut n = 0;
    for c in Path::new(path).components() {
        if !matches!(c, std::path::Component::Normal(_)) {
            return false;
        }
        n += 1;
    }
    (1..=depth).contains(&n)
}
