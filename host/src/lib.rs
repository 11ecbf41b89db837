//! Eddy's host runtime: reads events from NATS JetStream, runs WebAssembly plugins on them
//! with keyed state the host keeps in RocksDB, and publishes the results back to NATS.
//!
//! Where things live:
//! - [`config`]: the pipeline file and its validation;
//! - [`engine`]: wasmtime, the sandbox, and the host side of the WIT contract (`wit/`);
//! - [`state`]: keyed state in RocksDB (layout, key groups, TTL, batch overlay);
//! - [`transport`]: NATS connections, the input consumer, publishing with pipelined acks;
//! - [`pipeline`]: the run loop tying them together, and its ordering guarantees;
//! - [`metrics`]: counters, histograms and the Prometheus endpoint;
//! - [`cli`]: the `eddy` command's subcommands beyond `run` (event generator, tail, streams).

pub mod cli;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod pipeline;
pub mod state;
pub mod transport;
