//! Eddy's host runtime: reads events from NATS JetStream, runs WebAssembly plugins on them
//! with keyed state the host keeps in RocksDB, and publishes the results back to NATS.
//!
//! Where things live:
//! - [`config`]: the pipeline file and its validation;
//! - [`engine`]: wasmtime, the sandbox, and the host side of the WIT contract (`wit/`);
//! - [`state`]: keyed and broadcast state in RocksDB (layout, key groups, TTL, batch overlay,
//!   visits);
//! - [`checkpoint`]: incremental checkpoints, recovery, and portable savepoints;
//! - [`lookup`]: external stores plugins may read (Redis, NATS KV, HTTP, PostgreSQL), cached;
//! - [`transport`]: NATS connections, the input consumer, publishing with pipelined acks;
//! - [`pipeline`]: the run loop tying them together, and its ordering guarantees;
//! - [`reload`]: hot reload of plugin versions, probation and rollback;
//! - [`query`]: queryable state over NATS and HTTP;
//! - [`control`]: operator requests to running hosts (savepoints, checkpoints, status);
//! - [`metrics`]: counters, histograms and the Prometheus endpoint;
//! - [`cli`]: the `eddy` command's subcommands beyond `run` (event generator, tail, streams).

/// The allocator of every process linking the host (the `eddy` binary, tests, benchmarks).
/// Events, state values and NATS messages are allocated on one thread and freed on another
/// by the thousand per second; glibc's malloc spent about a fifth of the host's CPU there in
/// the end-to-end benchmark (see `docs/BENCHMARKS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod control;
pub mod engine;
pub mod lookup;
pub mod metrics;
pub mod pipeline;
pub mod query;
pub mod reload;
pub mod state;
pub mod transport;
