//! Eddy's host runtime: reads events from NATS JetStream, runs WebAssembly plugins on them
//! with keyed state the host keeps in RocksDB, and publishes the results back to NATS.
//!
//! The parts that know nothing of NATS are crates of their own under `host/crates/`, re-exported
//! here under their module names:
//! - [`state`] (`eddy-state`): keyed and broadcast state in RocksDB (layout, key groups, TTL,
//!   batch overlay, visits);
//! - [`checkpoint`] (`eddy-checkpoint`): the checkpoint format, incremental checkpoints,
//!   verified recovery, portable savepoints;
//! - [`engine`] (`eddy-engine`): wasmtime, the sandbox, the host side of the WIT contract
//!   (`wit/`), and the worker that runs batches through a plugin.
//!
//! This crate is the NATS-facing host on top of them:
//! - [`config`]: the pipeline file and its validation;
//! - [`lookup`]: external stores plugins may read (Redis, NATS KV, HTTP, PostgreSQL), cached;
//! - [`transport`]: NATS connections, the input consumer, publishing with pipelined acks;
//! - [`pipeline`]: the run loop tying them together, and its ordering guarantees;
//! - [`cluster`]: partitions that move between hosts by themselves (leases in NATS KV);
//! - [`reload`]: hot reload of plugin versions, probation and rollback;
//! - [`storage`]: checkpoint stores beyond the host (NATS object store, S3);
//! - [`query`]: queryable state over NATS and HTTP;
//! - [`control`]: operator requests to running hosts (savepoints, checkpoints, status);
//! - [`metrics`]: counters, histograms and the Prometheus endpoint;
//! - [`cli`]: the `eddy` command's subcommands beyond `run` (event generator, tail, streams);
//! - `throttle`: a failure's log line once a period, for failures that repeat.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod lookup;
pub mod metrics;
pub mod pipeline;
pub mod query;
pub mod reload;
pub mod storage;
mod throttle;
pub mod transport;
pub mod web;

/// Turns transparent huge pages off for this process (Linux), unless the operator asked
/// mimalloc for them (`MIMALLOC_ALLOW_THP=1`); the `eddy` binary does this first thing.
/// mimalloc asks for huge pages on its arenas, and the memory it hands back to the system and
/// takes again is then faulted in, and zeroed, two megabytes at a time: on a cluster host with
/// 16 partitions that was 18% of the host's CPU, and turning it off took a fifth off the CPU
/// per event and half off the peak memory (docs/BENCHMARKS.md, "Cluster mode against a single
/// host").
pub fn no_huge_page_churn() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Best effort: on failure the host runs as before, with huge pages.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

pub use eddy_checkpoint as checkpoint;
pub use eddy_engine as engine;
pub use eddy_state as state;
