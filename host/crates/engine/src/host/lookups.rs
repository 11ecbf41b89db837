//! The `lookup` import: answers from what the host fetched before the call (`prepare`), and
//! anything else fetched on the spot through the pipeline's [`super::LookupSource`].

use std::time::Instant;

use super::{CallMode, LookupAnswer, LookupFailure, PluginHost};
use crate::bindings::eddy::plugin::lookup;

impl PluginHost {
    /// Answers from what was fetched before the call, or fetches now (the batch waits; the
    /// wait is not charged to the plugin's CPU budget).
    fn lookup_many(&mut self, store: &str, keys: &[String]) -> Vec<LookupAnswer> {
        if self.mode == CallMode::Prepare {
            let reason = "lookups are made in handle, after prepare has planned them".to_string();
            return vec![Err(LookupFailure::Failed(reason)); keys.len()];
        }
        let mut answers: Vec<Option<LookupAnswer>> = keys
            .iter()
            .map(|k| {
                self.prefetched
                    .get(&(store.to_string(), k.clone()))
                    .cloned()
            })
            .collect();
        let missing: Vec<String> = keys
            .iter()
            .zip(&answers)
            .filter(|(_, a)| a.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        if !missing.is_empty() {
            let fetched = match &self.lookups {
                Some(source) => {
                    let started = Instant::now();
                    let fetched = source.fetch_blocking(store, &missing);
                    self.waited += started.elapsed();
                    fetched
                }
                None => vec![
                    Err(LookupFailure::UnknownStore(format!(
                        "`{store}`: the pipeline declares no lookup stores; add [lookup.{store}]"
                    )));
                    missing.len()
                ],
            };
            let mut fetched = fetched.into_iter();
            for a in answers.iter_mut().filter(|a| a.is_none()) {
                *a = fetched.next();
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(LookupFailure::Failed("no answer".into()))))
            .collect()
    }
}

fn lookup_to_wit(a: LookupAnswer) -> Result<Option<Vec<u8>>, lookup::LookupError> {
    a.map_err(|e| match e {
        LookupFailure::UnknownStore(m) => lookup::LookupError::UnknownStore(m),
        LookupFailure::Failed(m) => lookup::LookupError::Failed(m),
    })
}

impl lookup::Host for PluginHost {
    fn get(&mut self, store: String, key: String) -> Result<Option<Vec<u8>>, lookup::LookupError> {
        let answer = self
            .lookup_many(&store, std::slice::from_ref(&key))
            .pop()
            .unwrap_or_else(|| Err(LookupFailure::Failed("no answer".into())));
        lookup_to_wit(answer)
    }

    fn get_many(
        &mut self,
        store: String,
        keys: Vec<String>,
    ) -> Vec<Result<Option<Vec<u8>>, lookup::LookupError>> {
        self.lookup_many(&store, &keys)
            .into_iter()
            .map(lookup_to_wit)
            .collect()
    }
}
