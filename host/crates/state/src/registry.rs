//! The registry of a store's states and broadcast maps: each name's numeric id (the key
//! prefix of its entries), kind and TTL, kept in the meta column family so a restart, a query
//! or a savepoint sees the same ids as the plugin that created them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{
    META_BROADCAST_PREFIX, META_STATE_PREFIX, Result, StateError, StateInfo, StateKind, StateStore,
    Ttl,
};

#[derive(Serialize, Deserialize)]
struct RegistryEntry {
    id: u32,
    kind: StateKind,
    /// The TTL the state was last opened with (after operator overrides), so tools that read
    /// state without the plugin (queries, savepoints) apply the same expiry.
    #[serde(default)]
    ttl: Option<Ttl>,
}

#[derive(Default)]
pub(crate) struct Registry {
    by_name: HashMap<String, (u32, StateKind, Option<Ttl>)>,
    next_id: u32,
    /// Broadcast maps: name → id.
    maps: HashMap<String, u32>,
    next_map: u32,
}

impl StateStore {
    pub(crate) fn load_registry(&self) -> Result<()> {
        let mut reg = self.lock_registry();
        for (name, v) in self.meta_entries(META_STATE_PREFIX)? {
            let entry: RegistryEntry = serde_json::from_slice(&v)
                .map_err(|e| StateError::Corrupt(format!("registry entry {name}: {e}")))?;
            reg.next_id = reg.next_id.max(entry.id + 1);
            reg.by_name.insert(name, (entry.id, entry.kind, entry.ttl));
        }
        for (name, v) in self.meta_entries(META_BROADCAST_PREFIX)? {
            let id =
                v.as_ref().try_into().map(u32::from_be_bytes).map_err(|_| {
                    StateError::Corrupt(format!("broadcast map registry entry {name}"))
                })?;
            reg.next_map = reg.next_map.max(id + 1);
            reg.maps.insert(name, id);
        }
        Ok(())
    }

    /// The meta entries under `prefix`: (the rest of the key as text, value).
    fn meta_entries(&self, prefix: &str) -> Result<Vec<(String, Box<[u8]>)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .prefix_iterator_cf(self.meta_cf(), prefix.as_bytes())
        {
            let (k, v) = item?;
            let Some(name) = k.strip_prefix(prefix.as_bytes()) else {
                break;
            };
            out.push((String::from_utf8_lossy(name).into_owned(), v));
        }
        Ok(out)
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock leaves the registry consistent (inserts are
        // single operations), so a poisoned lock is safe to reuse.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the state called `name`, registering it on first use. The id is stable for the
    /// life of the state directory.
    pub fn open_state(&self, name: &str, kind: StateKind, ttl: Option<Ttl>) -> Result<StateInfo> {
        let ttl = match self
            .overrides
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            Some(over) => *over,
            None => ttl,
        };
        let info = self.register(name, kind, ttl)?;
        self.kinds
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.id, kind);
        let visibility = |t: Option<&(StateKind, Ttl)>| t.map(|(_, t)| t.visibility);
        let before = visibility(
            self.ttls
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&info.id),
        );
        let changes = before != ttl.map(|t| t.visibility);
        if changes {
            // Whether its entries may be cached (and deferred) changes (see `hot`): what waits
            // is written first, while no table lock is held (the compaction filter reads them).
            self.settle()?;
        }
        {
            let mut ttls = self.ttls.write().unwrap_or_else(|p| p.into_inner());
            match ttl {
                Some(t) => ttls.insert(info.id, (kind, t)),
                None => ttls.remove(&info.id),
            };
        }
        if changes {
            self.hot().forget_clean();
        }
        Ok(info)
    }

    fn register(&self, name: &str, kind: StateKind, ttl: Option<Ttl>) -> Result<StateInfo> {
        let mut reg = self.lock_registry();
        let id = match reg.by_name.get(name) {
            Some(&(_, existing, _)) if existing != kind => {
                return Err(StateError::WrongKind {
                    name: name.to_string(),
                    existing,
                    requested: kind,
                });
            }
            Some(&(id, _, stored_ttl)) if stored_ttl == ttl => {
                return Ok(StateInfo {
                    id,
                    name: name.to_string(),
                    kind,
                    ttl,
                });
            }
            Some(&(id, _, _)) => id,
            None => {
                reg.next_id += 1;
                reg.next_id - 1
            }
        };
        let entry = serde_json::to_vec(&RegistryEntry { id, kind, ttl })
            .map_err(|e| StateError::Corrupt(e.to_string()))?;
        // After a frozen cut's own writes: a state registered after a freeze returned is not
        // in its checkpoint.
        self.await_cut()?;
        self.db.put_cf_opt(
            self.meta_cf(),
            format!("{META_STATE_PREFIX}{name}").as_bytes(),
            entry,
            &self.write_opts,
        )?;
        reg.by_name.insert(name.to_string(), (id, kind, ttl));
        Ok(StateInfo {
            id,
            name: name.to_string(),
            kind,
            ttl,
        })
    }

    /// The registered keyed states, sorted by id, with the TTL they were last opened with.
    pub fn states(&self) -> Vec<StateInfo> {
        let reg = self.lock_registry();
        let mut out: Vec<StateInfo> = reg
            .by_name
            .iter()
            .map(|(n, (id, kind, ttl))| StateInfo {
                id: *id,
                name: n.clone(),
                kind: *kind,
                ttl: *ttl,
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    /// A registered keyed state by name.
    pub fn state(&self, name: &str) -> Option<StateInfo> {
        let reg = self.lock_registry();
        reg.by_name.get(name).map(|(id, kind, ttl)| StateInfo {
            id: *id,
            name: name.to_string(),
            kind: *kind,
            ttl: *ttl,
        })
    }

    /// Opens the broadcast map called `name`, registering it on first use. The id is stable
    /// for the life of the state.
    pub fn open_broadcast_map(&self, name: &str) -> Result<u32> {
        let mut reg = self.lock_registry();
        if let Some(id) = reg.maps.get(name) {
            return Ok(*id);
        }
        let id = reg.next_map;
        self.await_cut()?;
        self.db.put_cf_opt(
            self.meta_cf(),
            format!("{META_BROADCAST_PREFIX}{name}").as_bytes(),
            id.to_be_bytes(),
            &self.write_opts,
        )?;
        reg.next_map += 1;
        reg.maps.insert(name.to_string(), id);
        Ok(id)
    }

    /// The broadcast maps: name and id, sorted by id.
    pub fn broadcast_maps(&self) -> Vec<(String, u32)> {
        let reg = self.lock_registry();
        let mut out: Vec<(String, u32)> = reg.maps.iter().map(|(n, id)| (n.clone(), *id)).collect();
        out.sort_by_key(|m| m.1);
        out
    }

    /// The id of broadcast map `name`, if it exists.
    pub fn broadcast_map(&self, name: &str) -> Option<u32> {
        self.lock_registry().maps.get(name).copied()
    }
}
