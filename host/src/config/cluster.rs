//! `[cluster]`: the pipeline runs on every host that starts it, and its partitions move
//! between those hosts by themselves (leases in NATS KV). Without the section a host owns the
//! partitions `[partitions]` names.

use serde::Deserialize;

use super::{ConfigError, check_subject, err};

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The subject of partition `{partition}` in the input stream: the stream maps each event
    /// there with NATS's `{{partition(count, token)}}` (see `eddy streams`), and the
    /// partition's consumer reads only those. `"txn.p.{partition}"` stores every event of a
    /// partition under one subject, the layout the server reads fastest (a consumer filtered on
    /// a literal subject); `"txn.p.{partition}.>"` keeps the key token after it
    /// (`txn.p.3.c-42`), for keys taken from the subject, at more server work per message.
    pub partition_subject: String,
    /// How long a host's lease on a partition lasts without renewal: a dead host's partitions
    /// move after about this long. Renewed every third of it.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
}

fn default_lease_ms() -> u64 {
    6_000
}

impl ClusterConfig {
    /// The input subject of partition `p`.
    pub fn subject_of(&self, p: u32) -> String {
        self.partition_subject
            .replace("{partition}", &p.to_string())
    }

    /// Whether events keep their key token after the partition (`partition_subject` ends in
    /// `.>` or `.*`).
    pub fn keeps_key_token(&self) -> bool {
        self.partition_subject.ends_with(".>") || self.partition_subject.ends_with(".*")
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.partition_subject.contains("{partition}") {
            return Err(err(
                "cluster.partition_subject",
                format!(
                    "`{}` has no `{{partition}}`; write where partition N's events are, e.g. \"txn.p.{{partition}}.>\"",
                    self.partition_subject
                ),
            ));
        }
        check_subject("cluster.partition_subject", &self.subject_of(0), true)?;
        if self.lease_ms < 1_000 || self.lease_ms > 600_000 {
            return Err(err(
                "cluster.lease_ms",
                format!(
                    "{} is out of range; use 1000 to 600000 (default 6000)",
                    self.lease_ms
                ),
            ));
        }
        Ok(())
    }
}
