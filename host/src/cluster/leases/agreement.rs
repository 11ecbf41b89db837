//! Agreeing on the lease: every host of a pipeline runs with the lease the hosts and leases
//! buckets expire keys after, since an owner's fence is timed by its own lease. A host with
//! another lease is refused while any host runs; with none registered, the first to start
//! sets the buckets to its lease.

use anyhow::anyhow;

use super::Coordination;
use crate::transport::Nats;

impl Coordination {
    /// Makes sure the hosts and leases buckets expire keys after this host's lease. Every
    /// host of a pipeline must agree on it: a fence stops an owner a sixth of *its* lease
    /// after its last renewal, so a bucket that expires keys sooner would let another host
    /// take a partition its owner still runs. Buckets created with another lease are changed
    /// to this one if `may_change` and no other host is registered (every host was stopped
    /// to change `cluster.lease_ms`); otherwise this host refuses to join, with the fix.
    /// Returns the settings of the buckets it changed, as they were (see
    /// [`Coordination::put_back`]).
    pub(crate) async fn agree_on_lease(
        &self,
        nats: &Nats,
        may_change: bool,
    ) -> anyhow::Result<Vec<async_nats::jetstream::stream::Config>> {
        let mut differ = Vec::new();
        for kv in [&self.hosts, &self.leases] {
            // Read afresh: the bucket's own status is what it was when it was opened.
            let mut stream = kv.stream.clone();
            let config = stream
                .info()
                .await
                .map_err(|e| anyhow!("read the settings of the NATS KV bucket `{}`: {e}", kv.name))?
                .config
                .clone();
            if config.max_age != self.lease {
                differ.push((kv.name.as_str(), config));
            }
        }
        let Some((bucket, config)) = differ.first() else {
            return Ok(Vec::new());
        };
        let others = self.other_hosts().await?;
        if !may_change || !others.is_empty() {
            let running = if others.is_empty() {
                "another host has just set it".to_string()
            } else {
                format!(
                    "registered with it: {}; a host killed within the lease still counts",
                    others.join(", ")
                )
            };
            anyhow::bail!(
                "the NATS KV bucket `{bucket}` expires keys after {} ms, but this host's cluster.lease_ms is {} ms ({running}); every host of a pipeline must use the same lease, or one host could take a partition another still runs. Set cluster.lease_ms = {} here, or stop every host of the pipeline and start them all with the new lease_ms (the first to start changes the buckets)",
                config.max_age.as_millis(),
                self.lease.as_millis(),
                config.max_age.as_millis(),
            );
        }
        let mut changed = Vec::new();
        for (bucket, mut config) in differ {
            changed.push(config.clone());
            let from = config.max_age;
            config.max_age = self.lease;
            config.duplicate_window = config.duplicate_window.min(self.lease);
            nats.js.update_stream(&config).await.map_err(|e| {
                anyhow!(
                    "change the NATS KV bucket `{bucket}` to expire keys after cluster.lease_ms ({} ms): {e}",
                    self.lease.as_millis()
                )
            })?;
            tracing::warn!(
                bucket,
                from_ms = from.as_millis() as u64,
                to_ms = self.lease.as_millis() as u64,
                "no other host is registered: the bucket now expires keys after this host's cluster.lease_ms"
            );
        }
        Ok(changed)
    }

    /// Gives buckets changed by [`Coordination::agree_on_lease`] their settings back, for a
    /// host that changed them and then found another host registered with the old lease.
    pub(crate) async fn put_back(
        &self,
        nats: &Nats,
        configs: Vec<async_nats::jetstream::stream::Config>,
    ) {
        for config in configs {
            if let Err(e) = nats.js.update_stream(&config).await {
                tracing::warn!(
                    stream = %config.name,
                    "cannot give the cluster bucket back its lease of {} ms: {e}",
                    config.max_age.as_millis()
                );
            }
        }
    }

    /// The other hosts registered now.
    pub(crate) async fn other_hosts(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .heartbeats()
            .await?
            .into_iter()
            .map(|(host, _, _)| host)
            .filter(|host| *host != self.me)
            .collect())
    }
}
