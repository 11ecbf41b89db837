//! Names in the checkpoint directory: which files of a cut are stored by content under
//! `shared/` and under what name, and which `chk-<id>` directories it holds.

use std::path::Path;

/// Whether a file of a cut is stored by its content under `shared/`, once for all the
/// checkpoints that have it, and if so whether RocksDB never changes it (so its checksum can
/// be remembered by name and size):
/// - SST and OPTIONS files: yes and yes (new options are written to a new OPTIONS file);
/// - CURRENT, the 16 bytes naming the MANIFEST: the same until RocksDB starts a new MANIFEST,
///   so shared, but checksummed every time (its name and size stay when that happens);
/// - the MANIFEST: shared, checksummed every time. The cut's copy of an append-only log
///   differs at almost every checkpoint, so it is rarely shared in fact; stored by content it
///   is linked from the staged cut (which nothing writes once RocksDB made it: queries open it
///   read-only, and a restore copies it) instead of copied into a directory of its own;
/// - anything else (the write-ahead log of a cut written at once): `None`, the checkpoint's
///   own.
///
/// Stored as each checkpoint's own, OPTIONS (26 KB) and CURRENT would cost two more puts to
/// the store per checkpoint, for files that change about never.
pub(crate) fn shared_by_content(name: &str) -> Option<bool> {
    if name.ends_with(".sst") || name.starts_with("OPTIONS-") {
        Some(true)
    } else if name == "CURRENT" || name.starts_with("MANIFEST-") {
        Some(false)
    } else {
        None
    }
}

/// Where a file named `name` with checksum `sha` (hex) is stored: by content, under `shared/`.
pub(crate) fn shared_name(sha: &str, name: &str) -> String {
    format!("shared/{}-{name}", &sha[..16])
}

/// Ids of the `chk-<id>` directories in `dir`, ascending; with `complete`, only those with a
/// manifest.
pub(crate) fn list_ids(dir: &Path, complete: bool) -> Vec<u64> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ids: Vec<u64> = read
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_prefix("chk-")?.parse().ok()?;
            (!complete || e.path().join("manifest.json").is_file()).then_some(id)
        })
        .collect();
    ids.sort_unstable();
    ids
}
