//! Bulk state in and out of savepoints, without a running pipeline: every entry of one state
//! (or broadcast map) of a savepoint ([`entries`], for `eddy state export`), and a savepoint
//! built from entries ([`Builder`], for `eddy state load`) that a pipeline starts from with
//! `eddy run --from-savepoint`.
//!
//! A builder may start from an existing savepoint (`base`), adding one more state or map to
//! it: several states are loaded one after the other into one savepoint. A savepoint being
//! built is written under `<dir>.partial` and moved to `dir` only once its `savepoint.json` is
//! written: a load that fails or is stopped leaves nothing that could be started from, and a
//! base is replaced only by a complete savepoint.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::{FileWriter, Progress, Reader, SAVEPOINT_FORMAT, SavedState, SavepointMeta, read_meta};
use crate::{now_ms, sha256_file, write_atomically};
use eddy_state::StateKind;
use eddy_state::layout::push_list_element;

/// What is loaded or exported: one keyed state, or one broadcast map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A keyed state of this name and kind.
    State {
        /// Its name.
        name: String,
        /// Its kind.
        kind: StateKind,
    },
    /// A broadcast map of this name.
    Map(String),
}

impl Target {
    /// The state's or map's name.
    pub fn name(&self) -> &str {
        match self {
            Target::State { name, .. } | Target::Map(name) => name,
        }
    }

    /// The keyed state's kind (`None` for a broadcast map).
    pub fn kind(&self) -> Option<StateKind> {
        match self {
            Target::State { kind, .. } => Some(*kind),
            Target::Map(_) => None,
        }
    }
}

/// One entry as stored: keyed values and map entries with their timestamp header, a list whole
/// (all its elements), a broadcast value as it is.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The map key (map states).
    pub map_key: Option<&'a [u8]>,
    /// The stored bytes.
    pub stored: &'a [u8],
}

/// Calls `f` with every entry of `target` in the savepoint in `dir` (checksums checked first),
/// in key-group order; returns the savepoint's description. `progress` after each file.
pub fn entries(
    dir: &Path,
    target: &Target,
    mut f: impl FnMut(Entry<'_>) -> anyhow::Result<()>,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<SavepointMeta> {
    let meta = read_meta(dir)?;
    let (index, broadcast) = match target {
        Target::State { name, .. } => (
            meta.states
                .iter()
                .position(|s| &s.name == name)
                .with_context(|| {
                    let known: Vec<&str> = meta.states.iter().map(|s| s.name.as_str()).collect();
                    format!(
                        "savepoint {} has no state `{name}`; it has {known:?}",
                        dir.display()
                    )
                })?,
            false,
        ),
        Target::Map(name) => (
            meta.maps.iter().position(|m| m == name).with_context(|| {
                format!(
                    "savepoint {} has no broadcast map `{name}`; it has {:?}",
                    dir.display(),
                    meta.maps
                )
            })?,
            true,
        ),
    };
    let files: Vec<_> = meta
        .files
        .iter()
        .filter(|f| f.key_group.is_none() == broadcast)
        .collect();
    let mut count = 0;
    for (done, file) in files.iter().enumerate() {
        let path = dir.join(&file.path);
        if sha256_file(&path)? != file.sha256 {
            bail!(
                "savepoint {}: {} fails its checksum; the savepoint is damaged",
                dir.display(),
                file.path
            );
        }
        let mut r = Reader::open(&path)?;
        while let Some(i) = r.u32_or_end()? {
            let key = r.bytes()?;
            let map_key = if !broadcast && r.u8()? == 1 {
                Some(r.bytes()?)
            } else {
                None
            };
            let stored = r.bytes()?;
            if i as usize == index {
                count += 1;
                f(Entry {
                    key: &key,
                    map_key: map_key.as_deref(),
                    stored: &stored,
                })?;
            }
        }
        progress(Progress {
            done: done + 1,
            total: files.len(),
            entries: count,
        });
    }
    Ok(meta)
}

/// Builds a savepoint of one state (or broadcast map) from entries.
pub struct Builder {
    dir: PathBuf,
    partial: PathBuf,
    pipeline: String,
    key_groups: u32,
    target: Target,
    /// The savepoint this one adds to, and the index of the new state (or map) in it.
    base: Option<SavepointMeta>,
    index: u32,
    files: BTreeMap<u32, FileWriter>,
    /// Lists by key, built element by element, written at the end in the order their keys
    /// first appeared (so an export loaded again is exported in the same order).
    lists: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where each key's list is in `lists`: the key's hash and the index, compared with the
    /// key held there. A key is stored once, and growing the table reads no key (each is a
    /// cache miss away); see "List loads" in `docs/BENCHMARKS.md`.
    list_of: hashbrown::HashTable<(u64, usize)>,
    /// foldhash: keys are hashed once per list, and SipHash's strength buys nothing here.
    hasher: foldhash::fast::RandomState,
    entries: u64,
}

impl Builder {
    /// A savepoint of `target` for `pipeline` with `key_groups` key groups, to be written to
    /// `dir`. With `base` (which may be `dir` itself), it holds everything `base` holds too;
    /// otherwise `dir` must not exist.
    pub fn create(
        dir: &Path,
        base: Option<&Path>,
        pipeline: &str,
        key_groups: u32,
        target: Target,
    ) -> anyhow::Result<Builder> {
        if base.is_none() && dir.exists() {
            bail!(
                "{} exists already; choose another savepoint name, delete it, or add to it (--into)",
                dir.display()
            );
        }
        let mut partial = dir.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        if partial.exists() {
            std::fs::remove_dir_all(&partial)
                .with_context(|| format!("cannot clear {}", partial.display()))?;
        }
        std::fs::create_dir_all(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let (base, index) = match base {
            Some(b) => {
                let meta = read_meta(b)?;
                if meta.key_groups != key_groups {
                    bail!(
                        "{} has {} key groups, the pipeline {key_groups}: load into a savepoint of this pipeline",
                        b.display(),
                        meta.key_groups
                    );
                }
                let index = match &target {
                    Target::State { name, .. } if meta.states.iter().any(|s| &s.name == name) => {
                        bail!("{} holds state `{name}` already", b.display())
                    }
                    Target::Map(name) if meta.maps.contains(name) => {
                        bail!("{} holds broadcast map `{name}` already", b.display())
                    }
                    Target::State { .. } => meta.states.len(),
                    Target::Map(_) => meta.maps.len(),
                };
                for f in &meta.files {
                    let to = partial.join(&f.path);
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    crate::link_or_copy(&b.join(&f.path), &to)?;
                }
                (Some(meta), index as u32)
            }
            None => (None, 0),
        };
        Ok(Builder {
            dir: dir.to_path_buf(),
            partial,
            pipeline: pipeline.to_string(),
            key_groups,
            target,
            base,
            index,
            files: BTreeMap::new(),
            lists: Vec::new(),
            list_of: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            entries: 0,
        })
    }

    /// The file of `key`'s key group (or the broadcast map's file), created at its first entry.
    fn writer(&mut self, key: &[u8]) -> anyhow::Result<&mut FileWriter> {
        let kg = match self.target {
            Target::Map(_) => u32::MAX,
            Target::State { .. } => {
                u32::from(eddy_state::keygroup::key_group(key, self.key_groups))
            }
        };
        Ok(match self.files.entry(kg) {
            std::collections::btree_map::Entry::Occupied(open) => open.into_mut(),
            std::collections::btree_map::Entry::Vacant(new) => {
                let (path, key_group) = match kg {
                    u32::MAX => (format!("broadcast-m{}.bin", self.index), None),
                    kg => (format!("keyed/s{}-kg-{kg:05}.bin", self.index), Some(kg)),
                };
                new.insert(FileWriter::create(&self.partial, path, key_group)?)
            }
        })
    }

    fn record(&mut self, key: &[u8], map_key: Option<&[u8]>, stored: &[u8]) -> anyhow::Result<()> {
        let broadcast = matches!(self.target, Target::Map(_));
        let index = self.index;
        let w = self.writer(key)?;
        w.out.write_all(&index.to_be_bytes())?;
        w.bytes(key)?;
        if !broadcast {
            match map_key {
                Some(mk) => {
                    w.out.write_all(&[1])?;
                    w.bytes(mk)?;
                }
                None => w.out.write_all(&[0])?,
            }
        }
        w.bytes(stored)?;
        w.entries += 1;
        self.entries += 1;
        Ok(())
    }

    fn kind(&self) -> Option<StateKind> {
        self.target.kind()
    }

    /// A value state's value, or a broadcast map's entry: `stored` as the database keeps it.
    /// A later entry of the same key replaces an earlier one.
    pub fn value(&mut self, key: &[u8], stored: &[u8]) -> anyhow::Result<()> {
        match self.kind() {
            Some(StateKind::Value) | None => self.record(key, None, stored),
            Some(k) => bail!("a value entry for a {k:?} state"),
        }
    }

    /// A map entry (`stored` with its timestamp header).
    pub fn map_entry(&mut self, key: &[u8], map_key: &[u8], stored: &[u8]) -> anyhow::Result<()> {
        match self.kind() {
            Some(StateKind::Map) => self.record(key, Some(map_key), stored),
            k => bail!("a map entry for a {k:?} target"),
        }
    }

    /// Appends an element, written at `ts`, to `key`'s list.
    pub fn list_element(&mut self, key: Vec<u8>, ts: u64, value: &[u8]) -> anyhow::Result<()> {
        if self.kind() != Some(StateKind::List) {
            bail!("a list element for a {:?} target", self.kind());
        }
        // A list's elements usually come one after the other (an export writes them so): the
        // same key as the last element's needs no look-up.
        let at = match self.lists.last() {
            Some((last, _)) if *last == key => self.lists.len() - 1,
            _ => {
                let (lists, hasher) = (&mut self.lists, &self.hasher);
                let hash = hasher.hash_one(key.as_slice());
                match self
                    .list_of
                    .find(hash, |&(h, i)| h == hash && lists[i].0 == key)
                {
                    Some(&(_, i)) => i,
                    None => {
                        lists.push((key, Vec::new()));
                        let at = lists.len() - 1;
                        self.list_of.insert_unique(hash, (hash, at), |&(h, _)| h);
                        at
                    }
                }
            }
        };
        let list = &mut self.lists[at].1;
        // One allocation for the element, not one for each of its three parts.
        list.reserve(12 + value.len());
        push_list_element(list, ts, value);
        Ok(())
    }

    /// The entries of the savepoint this one adds to (0 without one).
    pub fn base_entries(&self) -> u64 {
        self.base.as_ref().map_or(0, |b| b.entries)
    }

    /// Writes the savepoint (its `savepoint.json` last) and moves it into place.
    pub fn finish(mut self) -> anyhow::Result<SavepointMeta> {
        self.list_of = hashbrown::HashTable::new();
        for (key, stored) in std::mem::take(&mut self.lists) {
            self.record(&key, None, &stored)?;
        }
        if matches!(self.target, Target::Map(_)) && self.files.is_empty() {
            self.writer(b"")?;
        }
        let base = self.base.take();
        let mut files = base.as_ref().map(|b| b.files.clone()).unwrap_or_default();
        for (_, w) in std::mem::take(&mut self.files) {
            files.push(w.finish(&self.partial)?);
        }
        let (mut states, mut maps) = base
            .as_ref()
            .map(|b| (b.states.clone(), b.maps.clone()))
            .unwrap_or_default();
        match &self.target {
            Target::State { name, kind } => states.push(SavedState {
                name: name.clone(),
                kind: *kind,
                ttl: None,
            }),
            Target::Map(name) => maps.push(name.clone()),
        }
        let meta = SavepointMeta {
            format: SAVEPOINT_FORMAT,
            pipeline: self.pipeline.clone(),
            created_ms: now_ms(),
            key_groups: self.key_groups,
            cut: base.as_ref().map(|b| b.cut.clone()).unwrap_or_default(),
            states,
            maps,
            files,
            entries: self.entries + base.as_ref().map_or(0, |b| b.entries),
            expired_skipped: base.as_ref().map_or(0, |b| b.expired_skipped),
        };
        write_atomically(
            &self.partial.join("savepoint.json"),
            &serde_json::to_vec_pretty(&meta)?,
        )?;
        // Replacing a base in place: the old copy goes only once the new one is complete.
        let mut old = self.dir.as_os_str().to_owned();
        old.push(".old");
        let old = PathBuf::from(old);
        let replacing = self.dir.exists();
        if replacing {
            std::fs::rename(&self.dir, &old)
                .with_context(|| format!("cannot move {} aside", self.dir.display()))?;
        }
        std::fs::rename(&self.partial, &self.dir).with_context(|| {
            format!(
                "cannot move {} to {}",
                self.partial.display(),
                self.dir.display()
            )
        })?;
        if replacing {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(meta)
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        // Unfinished: nothing half-built stays.
        let _ = std::fs::remove_dir_all(&self.partial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_state::layout::decode_list;

    /// Elements of one key arriving apart still make one list, in arrival order, and lists
    /// are written in the order their keys first came.
    #[test]
    fn a_list_key_that_comes_back_later_gets_its_elements_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sp = dir.path().join("sp");
        let target = Target::State {
            name: "recent".into(),
            kind: StateKind::List,
        };
        // One key group, so the file's order is the builder's order.
        let mut b = Builder::create(&sp, None, "p", 1, target.clone()).expect("builder");
        let keys = (0..5_000).map(|i| format!("k{i}")).collect::<Vec<_>>();
        for (i, k) in keys.iter().enumerate() {
            b.list_element(k.clone().into_bytes(), 1, format!("{i}a").as_bytes())
                .expect("element");
        }
        for (i, k) in keys.iter().enumerate().rev() {
            b.list_element(k.clone().into_bytes(), 2, format!("{i}b").as_bytes())
                .expect("element");
            b.list_element(k.clone().into_bytes(), 3, format!("{i}c").as_bytes())
                .expect("element");
        }
        b.finish().expect("finish");
        let mut got = Vec::new();
        entries(
            &sp,
            &target,
            |e| {
                let list = decode_list(e.stored).expect("list");
                let values: Vec<String> = list
                    .into_iter()
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .collect();
                got.push((String::from_utf8_lossy(e.key).into_owned(), values));
                Ok(())
            },
            |_| {},
        )
        .expect("entries");
        assert_eq!(got.len(), keys.len());
        for (i, (key, values)) in got.iter().enumerate() {
            assert_eq!(key, &keys[i]);
            assert_eq!(values, &[format!("{i}a"), format!("{i}b"), format!("{i}c")]);
        }
    }
}
