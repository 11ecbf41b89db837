//! Eddy's integration tests, one binary with a module per feature: every module runs against
//! real processes the harness (`eddy_tests`) starts on free loopback ports (nats-server, Redis,
//! PostgreSQL, a local HTTP store) and real WebAssembly components built from `plugins/`.
//!
//! One binary rather than one per file: each links wasmtime and RocksDB (hundreds of MB), and
//! the plugins are built once per process.

eddy_tests::host_allocator!();

mod broadcast;
mod bulk;
mod checkpoint;
mod cluster;
mod console;
mod delivery;
mod engine;
mod harness;
mod languages;
mod lookup;
mod pipeline;
mod process;
mod query;
mod quota;
mod reload;
mod security;
mod shadow;
mod storage;
