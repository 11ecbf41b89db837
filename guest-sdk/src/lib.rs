//! Write Eddy stream-processing plugins in Rust.
//!
//! An Eddy plugin is a WebAssembly component that the Eddy host feeds with events read from NATS.
//! For every event the plugin returns an [`Outcome`]: publish some messages, drop the event, or
//! reject it to the dead-letter subject. Plugins keep per-key state (value, map and list state,
//! in the style of Apache Flink's keyed state) in the host, which stores it in RocksDB, commits it
//! atomically with the input position, expires it and serves it to queries.
//!
//! This crate hides the component-model plumbing behind a small API:
//!
//! - implement [`Processor`] for a type of yours,
//! - export it with [`export!`](crate::export),
//! - keep state in [`ValueState`], [`MapState`] and [`ListState`] handles created in
//!   [`Processor::init`].
//!
//! # Quick start
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "count-per-key"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! eddy-sdk = { path = "../guest-sdk" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use eddy_sdk::{Config, Event, Outcome, Output, Processor, ValueState};
//! use serde::Deserialize;
//!
//! /// Counts the events of each key and tags every event with the running count.
//! struct CountPerKey {
//!     count: ValueState<u64>,
//!     header: String,
//! }
//!
//! #[derive(Deserialize)]
//! struct Settings {
//!     #[serde(default = "default_header")]
//!     header: String,
//! }
//!
//! fn default_header() -> String {
//!     "Count".to_owned()
//! }
//!
//! impl Processor for CountPerKey {
//!     fn init(config: &Config) -> Result<Self, String> {
//!         let settings: Settings = config.parse()?;
//!         Ok(CountPerKey {
//!             count: ValueState::new("count"),
//!             header: settings.header,
//!         })
//!     }
//!
//!     fn process(&mut self, event: &Event) -> Outcome {
//!         // `update` reads and writes the state of *this* event's key.
//!         let count = match self.count.update(|n| n.unwrap_or(0) + 1) {
//!             Ok(count) => count,
//!             Err(e) => return Outcome::reject(format!("count-per-key: {e}")),
//!         };
//!         Outcome::emit_one(
//!             Output::new(event.payload()).header(self.header.as_str(), count.to_string()),
//!         )
//!     }
//! }
//!
//! eddy_sdk::export!(CountPerKey);
//! ```
//!
//! Build it as a component:
//!
//! ```sh
//! rustup target add wasm32-wasip2
//! cargo build --release --target wasm32-wasip2
//! # → target/wasm32-wasip2/release/count_per_key.wasm
//! ```
//!
//! # The processing model
//!
//! - The host calls `init` once per plugin instance with the pipeline's `plugin.config` as JSON
//!   text (`{}` when none is set). [`export!`](crate::export) turns it into a [`Config`] and calls
//!   [`Processor::init`]; an `Err` stops the pipeline from starting and is shown to the operator.
//! - The host then hands over batches of events. [`Processor::process`] is called once per event,
//!   in input order, and each call returns exactly one [`Outcome`].
//! - Keyed state is always the state of the key of the event being processed
//!   ([`Event::key`]): state handles take no key argument. Outside `process` (for example in
//!   `init`) there is no current event and state reads and writes fail with
//!   [`StateError::NoSuchEvent`]; only opening a state works there.
//! - Do not carry meaning from one event to the next in fields of your processor: the host may
//!   re-run any event on its own (for example to isolate one that trapped), and then only the state
//!   of committed batches is visible. Fields are for configuration and state handles.
//! - A panic traps the instance; the host treats the event as failed. Prefer
//!   [`Outcome::reject`] for bad input.
//!
//! # Keyed state
//!
//! Create state handles in [`Processor::init`] and keep them in your processor. Each handle names
//! a state that is unique in the pipeline; it is opened in the host on first use (or eagerly with
//! `open()`, to fail `init` early when a name is used with another kind). Every method acts on the
//! current event's key and returns [`Result`]`<_, `[`StateError`]`>`.
//!
//! | handle | per key | main methods |
//! | --- | --- | --- |
//! | [`ValueState<T>`] | one `T` | `get`, `set`, `update`, `clear` |
//! | [`MapState<K, V>`] | entries `K → V`, ordered by key bytes | `get`, `put`, `remove`, `contains`, `entries`, `keys`, `is_empty`, `clear` |
//! | [`ListState<T>`] | a list of `T`, oldest first | `get`, `add`, `add_all`, `update`, `clear` |
//!
//! Writes are visible to later reads in the same batch and committed with the batch.
//!
//! Value and list state cross to the host a batch at a time: the first read of a state in a
//! batch fetches its values for every key of the batch in one call (unless the previous batch
//! read that state for fewer than a quarter of its events: then one key at a time), writes are
//! kept in the
//! plugin (later reads of the batch see them) and handed over in one call when the batch's
//! events are done. That is invisible to the plugin, with one difference: a write the host
//! refuses (a quota with policy `reject`) is met when the batch ends, not at `set`, and the
//! event is dead-lettered by the host either way. States with a TTL, or a quota that evicts,
//! keep one host call per read and write, and so does a state for the rest of a batch after
//! [`ValueState::set_with_ttl`]. Map state makes one call per operation.
//!
//! Entries can expire: [`ValueState::with_ttl`] (and the same on the other handles) takes a
//! [`Ttl`], modelled on Flink's `StateTtlConfig`. The pipeline's configuration may override it.
//!
//! # State encoding
//!
//! The host stores opaque bytes. Plugins written in other languages (JavaScript, Python, Go, C)
//! read and write the same state, so every SDK encodes it the same way:
//!
//! **Values** — the value of a [`ValueState`], each value of a [`MapState`] and each element of a
//! [`ListState`] — are JSON text in UTF-8 without a byte-order mark, written by `serde_json` in
//! its compact form (no insignificant whitespace). A struct is a JSON object whose member names
//! are the serde field names (so `struct Stats { count: u64 }` is `{"count":3}`), a `u64` is a
//! JSON integer (`1250`), a `String` a JSON string, `Option::None` is `null`, a `Vec` an array.
//! Readers must accept any valid JSON. JSON numbers above 2^53 lose precision in JavaScript: keep
//! integers that other languages read below that, or store them as strings.
//!
//! **Map keys** are encoded so that the host's order (unsigned lexicographic order of the key
//! bytes) is the natural order of the key type. See [`MapKey`]:
//!
//! | Rust key type | bytes | example |
//! | --- | --- | --- |
//! | `String` (passed as `&str`) | the UTF-8 bytes, no length prefix or terminator | `"tx-1"` → `74 78 2d 31` |
//! | `Vec<u8>` (passed as `&[u8]`) | the bytes as they are | `[1, 2]` → `01 02` |
//! | `u32` | 4 bytes, big-endian | `1` → `00 00 00 01` |
//! | `u64` | 8 bytes, big-endian | `1` → `00 00 00 00 00 00 00 01` |
//! | `i32` | 4 bytes, big-endian, of the two's-complement value with the sign bit flipped (`(v as u32) ^ 0x8000_0000`) | `-1` → `7f ff ff ff`, `0` → `80 00 00 00`, `1` → `80 00 00 01` |
//! | `i64` | 8 bytes, big-endian, of `(v as u64) ^ 0x8000_0000_0000_0000` | `-1` → `7f ff ff ff ff ff ff ff`, `0` → `80 00 00 00 00 00 00 00` |
//!
//! Decoding is strict: a value that is not valid JSON for the type, a string key that is not
//! UTF-8 and an integer key of the wrong length are [`StateError::Decode`] errors that name the
//! state.
//!
//! # Logging and time
//!
//! [`log`] writes into the host's log, tagged with the pipeline and plugin:
//! `eddy_sdk::log::info!("flagged {id}")`. [`now_ms`] is the host's processing-time clock, the
//! same clock that times state TTL.
//!
//! # Testing
//!
//! [`Event`], [`Config`], [`Outcome`] and [`Output`] are plain values: build them in native unit
//! tests to check parsing and output logic. Host imports (state, logging, the clock) only work
//! inside the host; natively they panic.
#![deny(missing_docs)]

mod broadcast;
mod config;
mod event;
pub mod log;
mod lookup;
mod outcome;
mod state;
mod visit;

#[doc(hidden)]
pub mod __private;

pub use broadcast::{BroadcastError, BroadcastEvent, BroadcastMap};
pub use config::Config;
pub use event::Event;
pub use lookup::{LookupError, LookupRequest, LookupStore};
pub use outcome::{Outcome, Output};
pub use state::{ListState, MapEntries, MapKey, MapKeys, MapState, StateError, Ttl, ValueState};
pub use visit::{VisitAction, VisitedEntry};

/// Bindings generated by `wit-bindgen` from `wit/eddy.wit`. Not a stable API: use the types at the
/// crate root instead.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, unreachable_pub, clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        path: "../wit",
        world: "packed-processor",
        // The `export!` macro of this crate expands wit-bindgen's export macro in the plugin's
        // crate, so the latter must be public and find the bindings through this crate.
        pub_export_macro: true,
        default_bindings_module: "eddy_sdk::wit",
    });
}

/// A stream processor: turns each event into an [`Outcome`].
///
/// Implement it for a type holding your configuration and state handles, and export that type
/// with [`export!`](crate::export). The host creates one value per plugin instance with
/// [`init`](Processor::init) and then calls [`process`](Processor::process) for every event,
/// in input order.
///
/// # Example
///
/// ```
/// use eddy_sdk::{Config, Event, Outcome, Output, Processor};
///
/// /// Upper-cases text payloads; rejects payloads that are not UTF-8.
/// struct Shout;
///
/// impl Processor for Shout {
///     fn init(_config: &Config) -> Result<Self, String> {
///         Ok(Shout)
///     }
///
///     fn process(&mut self, event: &Event) -> Outcome {
///         match std::str::from_utf8(event.payload()) {
///             Ok(text) => Outcome::emit_one(Output::new(text.to_uppercase())),
///             Err(_) => Outcome::reject("shout: payload is not UTF-8"),
///         }
///     }
/// }
///
/// eddy_sdk::export!(Shout);
///
/// // Processors are plain Rust values, so their logic can be tested natively.
/// let mut shout = Shout::init(&Config::new("{}")).unwrap();
/// let outcome = shout.process(&Event::new("k", "hi"));
/// assert_eq!(outcome, Outcome::emit_one(Output::new("HI")));
/// ```
pub trait Processor: Sized + 'static {
    /// Builds the processor from the pipeline's plugin configuration.
    ///
    /// Called once per instance, before any event. Create state handles here. An `Err` stops the
    /// pipeline from starting (or rejects the new plugin version) and its message is shown to
    /// the operator, so say what is wrong and how to fix it.
    fn init(config: &Config) -> Result<Self, String>;

    /// Handles one event. Keyed state handles act on this event's key.
    fn process(&mut self, event: &Event) -> Outcome;

    /// Handles one event of a broadcast input (`[broadcast.<name>]` in the pipeline), with
    /// read-write access to [`BroadcastMap`]s. It must be deterministic: see the [`BroadcastMap`]
    /// documentation. An `Err` sends the event to the dead-letter subject with the message and
    /// discards its writes.
    ///
    /// The default rejects every broadcast event: implement it if the pipeline has broadcast
    /// inputs.
    fn process_broadcast(&mut self, event: &BroadcastEvent) -> Result<(), String> {
        let _ = event;
        Err(__private::NO_BROADCAST.to_owned())
    }

    /// The lookups [`process`](Processor::process) will make for `event`, so the host can
    /// fetch them concurrently (and from its caches) before the batch is processed. Keyed state
    /// is not readable here: derive the keys from the event. The default plans none.
    fn plan_lookups(&self, event: &Event) -> Vec<LookupRequest> {
        let _ = event;
        Vec::new()
    }

    /// Receives one entry of a state this plugin asked to visit with `visit_all_keys(tag)`,
    /// and says what to do with it. The default keeps every entry.
    fn visit(&mut self, tag: &str, state: &str, entry: &VisitedEntry) -> VisitAction {
        let _ = (tag, state, entry);
        VisitAction::Keep
    }

    /// Runs once when this version replaces a running one (`previous_version` is the old
    /// version's content hash), before any event. Transform state read differently here, with
    /// `visit_all_keys`. An `Err` rejects the new version: the old one keeps running. The
    /// default does nothing.
    fn migrate(&mut self, previous_version: &str) -> Result<(), String> {
        let _ = previous_version;
        Ok(())
    }
}

/// Exports a [`Processor`] as the plugin's `handler`.
///
/// Use it once, at the top level of the plugin crate (a `cdylib`), with the processor's type:
///
/// ```
/// # use eddy_sdk::{Config, Event, Outcome, Processor};
/// struct Nothing;
///
/// impl Processor for Nothing {
///     fn init(_config: &Config) -> Result<Self, String> {
///         Ok(Nothing)
///     }
///     fn process(&mut self, _event: &Event) -> Outcome {
///         Outcome::Drop
///     }
/// }
///
/// eddy_sdk::export!(Nothing);
/// ```
///
/// The generated `init` parses nothing itself: it wraps the configuration text in a [`Config`],
/// calls [`Processor::init`] and keeps the value for the life of the instance. The generated
/// `handle` and `handle-packed` (the same batch in flat lists, which hosts of 0.2.2 call) call
/// [`Processor::process`] once per event of the batch, with keyed state pointed at that event,
/// and return one outcome per event. If `init` has not succeeded, every event is
/// rejected with the reason `plugin not initialised`. The optional exports (broadcast handling,
/// lookup planning, visits, migration) call the [`Processor`] methods of the same names, whose
/// defaults do nothing (or reject broadcast events).
#[macro_export]
macro_rules! export {
    ($processor:ty) => {
        const _: () = {
            struct __EddyHandler;

            impl $crate::__private::Guest for __EddyHandler {
                fn init(
                    config: $crate::__private::String,
                ) -> ::core::result::Result<(), $crate::__private::String> {
                    $crate::__private::init::<$processor>(config)
                }

                fn handle(
                    events: $crate::__private::Vec<$crate::__private::WitEvent>,
                ) -> $crate::__private::Vec<$crate::__private::WitOutcome> {
                    $crate::__private::handle(events)
                }
            }

            impl $crate::__private::PackedGuest for __EddyHandler {
                fn handle_packed(
                    events: $crate::__private::WitPackedEvents,
                ) -> $crate::__private::WitPackedOutcomes {
                    $crate::__private::handle_packed(events)
                }
            }

            impl $crate::__private::BroadcastGuest for __EddyHandler {
                fn handle_broadcast(
                    events: $crate::__private::Vec<$crate::__private::WitBroadcastEvent>,
                ) -> $crate::__private::Vec<::core::result::Result<(), $crate::__private::String>>
                {
                    $crate::__private::handle_broadcast(events)
                }
            }

            impl $crate::__private::PlannerGuest for __EddyHandler {
                fn prepare(
                    events: $crate::__private::Vec<$crate::__private::WitEvent>,
                ) -> $crate::__private::Vec<
                    $crate::__private::Vec<$crate::__private::WitLookupRequest>,
                > {
                    $crate::__private::prepare(events)
                }
            }

            impl $crate::__private::VisitorGuest for __EddyHandler {
                fn visit(
                    tag: $crate::__private::String,
                    state: $crate::__private::String,
                    entries: $crate::__private::Vec<$crate::__private::WitVisitedEntry>,
                ) -> $crate::__private::Vec<$crate::__private::WitVisitAction> {
                    $crate::__private::visit(tag, state, entries)
                }
            }

            impl $crate::__private::MigratorGuest for __EddyHandler {
                fn migrate(
                    previous_version: $crate::__private::String,
                ) -> ::core::result::Result<(), $crate::__private::String> {
                    $crate::__private::migrate(previous_version)
                }
            }

            // The exports exist only in the Wasm component. A native build of a plugin crate
            // (`cargo build --workspace`) leaves them out: their names (`eddy:plugin/...`) are
            // not valid in a native linker's symbol list.
            #[cfg(target_family = "wasm")]
    $crate::wit::export!(__EddyHandler with_types_in $crate::wit);
            // What the exports would call, kept in use there, so that the plugin's own code is
            // not dead code.
            #[cfg(not(target_family = "wasm"))]
            const _: fn(
                $crate::__private::String,
            ) -> ::core::result::Result<(), $crate::__private::String> =
                <__EddyHandler as $crate::__private::Guest>::init;
        };
    };
}

/// The host's processing-time clock, in milliseconds since the Unix epoch.
///
/// This is the clock that times state TTL, so a test clock in the host drives both. Use
/// [`Event::timestamp_ms`] for the time the input stream stored the event.
///
/// ```no_run
/// let now = eddy_sdk::now_ms();
/// eddy_sdk::log::debug!("now is {now}");
/// ```
pub fn now_ms() -> u64 {
    wit::eddy::plugin::clock::now_ms()
}
