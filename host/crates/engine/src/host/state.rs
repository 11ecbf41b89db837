//! The state imports: `keyed-state` (value, map and list state of the current batch's
//! events, TTL, visits) and `broadcast-state` (tables every key sees, written only from
//! `handle-broadcast`). The batch calls of `keyed-state` are in [`super::batch`].

use super::{CallMode, PluginHost, VisitRequest, WitError, to_wit};
use crate::bindings::eddy::plugin::{broadcast_state, keyed_state};
use eddy_state::{StateKind, Ttl};

fn ttl_from_wit(t: keyed_state::TtlConfig) -> Ttl {
    Ttl {
        ttl_ms: t.ttl_ms,
        update: match t.update {
            keyed_state::TtlUpdate::OnCreateAndWrite => eddy_state::TtlUpdate::OnCreateAndWrite,
            keyed_state::TtlUpdate::OnReadAndWrite => eddy_state::TtlUpdate::OnReadAndWrite,
        },
        visibility: match t.visibility {
            keyed_state::TtlVisibility::NeverReturnExpired => {
                eddy_state::TtlVisibility::NeverReturnExpired
            }
            keyed_state::TtlVisibility::ReturnExpiredIfNotCleanedUp => {
                eddy_state::TtlVisibility::ReturnExpiredIfNotCleanedUp
            }
        },
    }
}

impl keyed_state::Host for PluginHost {
    fn open(
        &mut self,
        name: String,
        kind: keyed_state::StateKind,
        ttl: Option<keyed_state::TtlConfig>,
    ) -> Result<u32, WitError> {
        let kind = match kind {
            keyed_state::StateKind::Value => StateKind::Value,
            keyed_state::StateKind::Map => StateKind::Map,
            keyed_state::StateKind::List => StateKind::List,
        };
        if name.is_empty() {
            return Err(WitError::Storage("a state needs a non-empty name".into()));
        }
        let info = self
            .state
            .open_state(&name, kind, ttl.map(ttl_from_wit))
            .map_err(to_wit)?;
        let id = info.id;
        let slot = id as usize;
        if self.opened.len() <= slot {
            self.opened.resize(slot + 1, None);
        }
        let quota = self.state.quota(&info.name);
        self.opened[slot] = Some(super::OpenedState { info, quota });
        Ok(id)
    }

    fn value_get(&mut self, state: u32, event: u32) -> Result<Option<Vec<u8>>, WitError> {
        self.with(state, event, StateKind::Value, |s, kg, k, a| {
            a.value_get(s, kg, k)
        })
    }

    fn value_set(&mut self, state: u32, event: u32, value: Vec<u8>) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::Value, |s, kg, k, a| {
            a.value_set(s, kg, k, &value);
            Ok(())
        })
    }

    fn value_set_with_ttl(
        &mut self,
        state: u32,
        event: u32,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::Value, |s, kg, k, a| {
            a.value_set_ttl(s, kg, k, &value, Some(ttl_ms));
            Ok(())
        })
    }

    fn value_clear(&mut self, state: u32, event: u32) -> Result<(), WitError> {
        self.with(state, event, StateKind::Value, |s, kg, k, a| {
            a.value_clear(s, kg, k);
            Ok(())
        })
    }

    fn map_get(
        &mut self,
        state: u32,
        event: u32,
        map_key: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_get(s, kg, k, &map_key)
        })
    }

    fn map_put(
        &mut self,
        state: u32,
        event: u32,
        map_key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_put(s, kg, k, &map_key, &value);
            Ok(())
        })
    }

    fn map_put_with_ttl(
        &mut self,
        state: u32,
        event: u32,
        map_key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_put_ttl(s, kg, k, &map_key, &value, Some(ttl_ms));
            Ok(())
        })
    }

    fn map_remove(&mut self, state: u32, event: u32, map_key: Vec<u8>) -> Result<(), WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_remove(s, kg, k, &map_key);
            Ok(())
        })
    }

    fn map_contains(&mut self, state: u32, event: u32, map_key: Vec<u8>) -> Result<bool, WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            Ok(a.map_get(s, kg, k, &map_key)?.is_some())
        })
    }

    fn map_entries(
        &mut self,
        state: u32,
        event: u32,
        start_after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_entries(s, kg, k, start_after.as_deref(), limit.min(10_000) as usize)
        })
    }

    fn map_is_empty(&mut self, state: u32, event: u32) -> Result<bool, WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_is_empty(s, kg, k)
        })
    }

    fn map_clear(&mut self, state: u32, event: u32) -> Result<(), WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_clear(s, kg, k);
            Ok(())
        })
    }

    fn list_get(&mut self, state: u32, event: u32) -> Result<Vec<Vec<u8>>, WitError> {
        self.with(state, event, StateKind::List, |s, kg, k, a| {
            a.list_get(s, kg, k)
        })
    }

    fn list_add(&mut self, state: u32, event: u32, value: Vec<u8>) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::List, |s, kg, k, a| {
            a.list_add_all(s, kg, k, std::slice::from_ref(&value))
        })
    }

    fn list_add_all(
        &mut self,
        state: u32,
        event: u32,
        values: Vec<Vec<u8>>,
    ) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::List, |s, kg, k, a| {
            a.list_add_all(s, kg, k, &values)
        })
    }

    fn list_update(
        &mut self,
        state: u32,
        event: u32,
        values: Vec<Vec<u8>>,
    ) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::List, |s, kg, k, a| {
            a.list_update(s, kg, k, &values);
            Ok(())
        })
    }

    fn list_clear(&mut self, state: u32, event: u32) -> Result<(), WitError> {
        self.with(state, event, StateKind::List, |s, kg, k, a| {
            a.value_clear(s, kg, k);
            Ok(())
        })
    }

    fn batchable(&mut self, state: u32) -> Result<bool, WitError> {
        self.state_batchable(state)
    }

    fn key_slots(&mut self) -> Vec<u32> {
        self.slots_of_keys().0.clone()
    }

    fn value_get_batch(
        &mut self,
        state: u32,
    ) -> Result<(Vec<bool>, keyed_state::PackedValues), WitError> {
        self.values_of_batch(state)
    }

    fn list_get_batch(
        &mut self,
        state: u32,
    ) -> Result<(Vec<u32>, keyed_state::PackedValues), WitError> {
        self.lists_of_batch(state)
    }

    fn write_batch(
        &mut self,
        writes: Vec<keyed_state::StateWrite>,
        values: keyed_state::PackedValues,
    ) -> Result<(), (u32, WitError)> {
        self.apply_write_batch(writes, values)
    }

    fn visit_all_keys(&mut self, state: u32, tag: String) -> Result<(), WitError> {
        let info = self
            .opened
            .get(state as usize)
            .and_then(Option::as_ref)
            .ok_or(WitError::UnknownState)?
            .info
            .clone();
        if !matches!(self.mode, CallMode::Broadcast | CallMode::Migrate) {
            return Err(WitError::ReadOnly(format!(
                "visits of every key (state `{}`) may be asked for only from handle-broadcast or migrate, not from {}",
                info.name,
                self.mode.export()
            )));
        }
        self.visits.push(VisitRequest { state: info, tag });
        Ok(())
    }
}

impl broadcast_state::Host for PluginHost {
    fn open_map(&mut self, name: String) -> Result<u32, broadcast_state::BroadcastError> {
        if name.is_empty() {
            return Err(broadcast_state::BroadcastError::Storage(
                "a broadcast map needs a non-empty name".into(),
            ));
        }
        let id = self
            .state
            .open_broadcast_map(&name)
            .map_err(|e| broadcast_state::BroadcastError::Storage(e.to_string()))?;
        self.maps.insert(id, name);
        Ok(id)
    }

    fn get(
        &mut self,
        table: u32,
        key: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, broadcast_state::BroadcastError> {
        self.with_map(table, false, |a| a.get(table, &key))
    }

    fn entries(
        &mut self,
        table: u32,
        start_after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, broadcast_state::BroadcastError> {
        self.with_map(table, false, |a| {
            a.entries(table, start_after.as_deref(), limit.min(10_000) as usize)
        })
    }

    fn put(
        &mut self,
        table: u32,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), broadcast_state::BroadcastError> {
        self.with_map(table, true, |a| {
            a.put(table, &key, value);
            Ok(())
        })
    }

    fn remove(&mut self, table: u32, key: Vec<u8>) -> Result<(), broadcast_state::BroadcastError> {
        self.with_map(table, true, |a| {
            a.remove(table, &key);
            Ok(())
        })
    }

    fn clear(&mut self, table: u32) -> Result<(), broadcast_state::BroadcastError> {
        self.with_map(table, true, |a| {
            a.clear(table);
            Ok(())
        })
    }
}
