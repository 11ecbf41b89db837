//! The `eddy` command line's arguments: every subcommand and its flags, as clap reads them
//! (`eddy --help` shows the same docs).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::{bulk, io};

/// The `eddy` command line.
#[derive(Parser)]
#[command(
    name = "eddy",
    version,
    about = "Stateful stream processing on NATS with WebAssembly plugins"
)]
pub struct Cli {
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
    /// How log lines are written to stderr: `human` (coloured when stderr is a terminal) or
    /// `json`, one object per line with `timestamp`, `level`, `target`, `message` and the
    /// line's fields at the top level, for log shippers.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Human,
        env = "EDDY_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

/// The form of the log lines on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people reading a terminal or a file.
    Human,
    /// One JSON object per line.
    Json,
}

/// A subcommand.
#[derive(Subcommand)]
pub enum Command {
    /// Runs a pipeline until SIGINT/SIGTERM.
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Start from this savepoint (the state directory must have no checkpoint yet).
        #[arg(long)]
        from_savepoint: Option<PathBuf>,
    },
    /// Builds a plugin project (`eddy new plugin`) and runs it on NATS, starting a local
    /// nats-server if none answers; rebuilds on every source change and shows outputs and
    /// dead letters as they arrive.
    Dev {
        /// The project's directory.
        #[arg(default_value = ".")]
        project: PathBuf,
    },
    /// Serves the operations console of a running pipeline: hosts, rates, checkpoints,
    /// deployments, dead letters and state in a browser, with actions for operators.
    Console {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Address to serve it on (default: console.listen, 127.0.0.1:8089).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Validates a pipeline file and compiles its plugin, without connecting to NATS.
    Check {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Sample events (JSON Lines of payloads): each must have a key where `input.key`
        /// says.
        #[arg(long)]
        sample: Option<PathBuf>,
    },
    /// Creates the JetStream streams a pipeline needs, where missing.
    Streams {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Subjects for the input stream when it must be created (default: input.subjects).
        #[arg(long)]
        input_subject: Vec<String>,
    },
    /// Publishes synthetic card transactions (JSON) to a subject.
    Produce {
        /// Subject to publish to; a `*` token is replaced by each transaction's customer
        /// (`txn.in.*` for a cluster's partitioned input).
        #[arg(long, default_value = "txn.in")]
        subject: String,
        /// How many.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Distinct customers.
        #[arg(long, default_value_t = 100)]
        customers: usize,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Repeat an earlier transaction id every N transactions (0: never).
        #[arg(long, default_value_t = 0)]
        duplicate_every: usize,
        /// Where NATS is.
        #[command(flatten)]
        nats: io::NatsArgs,
    },
    /// Lists, inspects or deletes the checkpoints of a pipeline on this machine.
    Checkpoints {
        /// What to do.
        #[command(subcommand)]
        action: CheckpointAction,
    },
    /// Creates (through the running hosts), lists, inspects or deletes savepoints.
    Savepoint {
        /// What to do.
        #[command(subcommand)]
        action: SavepointAction,
    },
    /// Deploys a plugin version: every host of the pipeline swaps to it (hot reload), or runs
    /// it as a shadow beside the live version (`--shadow`), then promotes or discards the
    /// shadow.
    Deploy {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The plugin component (not with --promote or --discard).
        plugin: Option<PathBuf>,
        /// Run it as a shadow: on the same events as the live version, with a state of its own
        /// seeded from the live state, its outputs compared and never published.
        #[arg(long, conflicts_with_all = ["promote", "discard"])]
        shadow: bool,
        /// Make the shadow live: its version and its state (no probation: it has run beside the
        /// live version).
        #[arg(long, conflicts_with = "discard")]
        promote: bool,
        /// Stop the shadow and delete its state.
        #[arg(long)]
        discard: bool,
        /// Seconds to wait for the hosts to report the version live (0: do not wait).
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Shows what the running hosts of a pipeline are doing: plugin version, deployments,
    /// rollbacks, positions, checkpoints.
    Status {
        /// The pipeline file.
        pipeline: PathBuf,
        /// JSON (one object per host) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Dead letters: list them by kind, show one, replay them to the input once fixed.
    Dlq {
        /// What to do.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// The hosts of a cluster and who owns each partition (`[cluster]` pipelines).
    Cluster {
        /// What to do.
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Reads state from the running hosts (the queryable state service); loads a state from
    /// a file into a savepoint, and exports one.
    State {
        /// What to read.
        #[command(subcommand)]
        action: StateAction,
    },
    /// Runs a plugin on events from a JSON Lines file (or `-`), with state in a temporary
    /// directory, and prints each event's outcome as JSON: no NATS needed.
    Test {
        /// The plugin component.
        plugin: PathBuf,
        /// The events.
        events: PathBuf,
        /// JSON pointer to each event's key in its payload [default: the pipeline file's
        /// `input.key`, else /key].
        #[arg(long)]
        key: Option<String>,
        /// The pipeline file whose `input.key` says where keys are (when there is one).
        #[arg(short = 'p', long = "pipeline", default_value = "pipeline.toml")]
        pipeline: PathBuf,
        /// Compare the outcomes (and state, with --dump-state) with this JSON Lines file;
        /// fail with the differences.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Lines are envelopes: {"key", "payload", "subject", "headers", "broadcast"}.
        #[arg(long)]
        envelope: bool,
        /// The plugin configuration (JSON).
        #[arg(long, default_value = "{}")]
        config: String,
        /// Events per plugin call.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Print every state entry at the end.
        #[arg(long)]
        dump_state: bool,
        /// CPU budget per event, ms, as `limits.cpu_ms_per_event` in a pipeline.
        #[arg(long, default_value_t = 100)]
        cpu_ms_per_event: u64,
        /// Answer the plugin's lookups from this JSON file, store by store, key by key:
        /// {"profiles": {"c1": {"tier": "gold"}, "c2": null}} (no store is contacted).
        #[arg(long)]
        lookups: Option<PathBuf>,
    },
    /// Creates something new from a template: `eddy new plugin --lang python my-filter`.
    New {
        /// What to create.
        #[command(subcommand)]
        what: NewWhat,
    },
    /// Publishes one message (a broadcast rule, a test event) to a JetStream subject and
    /// waits until it is stored.
    Publish {
        /// Subject.
        subject: String,
        /// Payload (text, usually JSON).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        payload: Option<String>,
        /// Publish each line of this file (`-`: standard input) as a message, in order: a
        /// JSON Lines file of events.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Where NATS is.
        #[command(flatten)]
        nats: io::NatsArgs,
    },
    /// Prints the last messages stored on a subject (`-f`: and follows new ones).
    Tail {
        /// Subject (wildcards allowed).
        subject: String,
        /// The last this many.
        #[arg(long, short = 'n', default_value_t = 10)]
        count: usize,
        /// Then print each new message as it is stored, until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Write the payloads alone, byte for byte (control characters are escaped
        /// otherwise).
        #[arg(long)]
        raw: bool,
        /// Where NATS is.
        #[command(flatten)]
        nats: io::NatsArgs,
    },
}

/// What `eddy new` creates.
#[derive(Subcommand)]
pub enum NewWhat {
    /// A plugin directory that builds into a component and runs with `eddy test`.
    Plugin {
        /// Its name: lowercase letters, digits and `-`.
        name: String,
        /// The language: rust, js, python, go or c.
        #[arg(long, default_value = "rust")]
        lang: String,
        /// Where to create it (the directory `<dir>/<name>`).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// `eddy checkpoints` actions.
#[derive(Subcommand)]
pub enum CheckpointAction {
    /// One line per completed checkpoint (in cluster mode, of every partition).
    List {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Cluster mode: this partition's alone.
        #[arg(long)]
        partition: Option<u32>,
    },
    /// A checkpoint's manifest.
    Inspect {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The checkpoint id.
        id: u64,
        /// Cluster mode: the partition whose checkpoint it is.
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Deletes a checkpoint (its shared SST files go at the host's next retention, once
    /// unused).
    Delete {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The checkpoint id.
        id: u64,
        /// Cluster mode: the partition whose checkpoint it is.
        #[arg(long)]
        partition: Option<u32>,
    },
}

/// `eddy savepoint` actions.
#[derive(Subcommand)]
pub enum SavepointAction {
    /// Asks the running hosts for a savepoint at a consistent cut, and waits for it.
    Create {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Its name (default `sp-<unix ms>`).
        #[arg(long)]
        name: Option<String>,
        /// Where the hosts write it (default checkpoint.savepoint_dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The savepoints in the pipeline's savepoint directory.
    List {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// A savepoint's metadata.
    Inspect {
        /// The savepoint directory.
        savepoint: PathBuf,
    },
    /// Deletes a savepoint directory.
    Delete {
        /// The savepoint directory.
        savepoint: PathBuf,
    },
}

/// `eddy cluster` actions.
#[derive(Subcommand)]
pub enum ClusterAction {
    /// Live hosts; per partition its owner, epoch, lag and last checkpoint.
    Status {
        /// The pipeline file.
        pipeline: PathBuf,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Starts a partition over that cannot go on from its checkpoints (every one corrupt):
    /// its next owner starts from empty state and replays its input from the start of the
    /// stream, or seeds it from a savepoint on a host started with `--from-savepoint`.
    Reset {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The partition.
        #[arg(long)]
        partition: u32,
        /// Even while a live host runs it (its state is thrown away).
        #[arg(long)]
        force: bool,
    },
}

/// `eddy dlq` actions.
#[derive(Subcommand)]
pub enum DlqAction {
    /// How many dead letters of each kind (`Eddy-Error-Kind`), and the last few.
    List {
        /// The pipeline file.
        pipeline: PathBuf,
        /// How many of the newest to list.
        #[arg(long, short = 'n', default_value_t = 20)]
        last: usize,
    },
    /// One dead letter whole: its headers (the error, its kind, where the event came from)
    /// and payload.
    Show {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Its sequence in the dead-letter stream (`eddy dlq list` names them).
        sequence: u64,
    },
    /// Publishes dead letters back to the subjects their events came on, oldest first, each
    /// at most once, and removes them from the dead-letter stream.
    Replay {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Only this kind (`key`, `rejected`, `trap`, `cpu-budget`, `memory-limit`,
        /// `contract`, `lookup`, `too-large`, `quota`).
        #[arg(long)]
        kind: Option<String>,
        /// Only those stored within this age: 30s, 15m, 2h, 1d.
        #[arg(long)]
        since: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Leave the dead letters in their stream (a second replay within the input
        /// stream's duplicate window still stores nothing twice).
        #[arg(long)]
        keep: bool,
    },
}

/// `eddy state` actions.
#[derive(Subcommand)]
pub enum StateAction {
    /// A keyed state's value (`--map`: map entries, `--list`: list elements) for a key.
    Get {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The state's name.
        state: String,
        /// The key.
        key: String,
        /// The state is a map state.
        #[arg(long, conflicts_with = "list")]
        map: bool,
        /// The state is a list state.
        #[arg(long)]
        list: bool,
        /// Map state: only entries whose key starts with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Read the last completed checkpoint instead of the latest state.
        #[arg(long, conflicts_with = "as_of")]
        checkpoint: bool,
        /// Read a retained checkpoint: its id, a time (2026-12-03T10:02:00Z: the newest
        /// checkpoint cut at or before it), or a duration ago (10m).
        #[arg(long, value_parser = parse_as_of)]
        as_of: Option<crate::query::AsOf>,
    },
    /// A broadcast map's entry (or its entries).
    Broadcast {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The map's name.
        map: String,
        /// The key (all entries if none).
        key: Option<String>,
        /// Read a retained checkpoint (as for `get`).
        #[arg(long, value_parser = parse_as_of)]
        as_of: Option<crate::query::AsOf>,
    },
    /// Which partition and host own a key.
    Owner {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The key.
        key: String,
    },
    /// Builds a savepoint holding a state (or broadcast map) read from a JSON Lines, CSV or
    /// Parquet file; the pipeline starts from it with `eddy run --from-savepoint`.
    Load {
        /// The pipeline file (its name and key groups).
        pipeline: PathBuf,
        /// The file: one entry per line (`{"key": ..., "value": ...}`), CSV with a header, or
        /// Parquet with the same columns.
        file: PathBuf,
        /// The keyed state to fill.
        #[arg(long, required_unless_present = "map", conflicts_with = "map")]
        state: Option<String>,
        /// Its kind.
        #[arg(long, value_enum, default_value = "value")]
        kind: KindArg,
        /// The broadcast map to fill (instead of a keyed state).
        #[arg(long)]
        map: Option<String>,
        /// The file's format (default: from its extension, `.csv`, `.parquet` or JSON Lines).
        #[arg(long, value_enum)]
        format: Option<bulk::Format>,
        /// A bad line stops the load (`fail`, nothing is loaded) or is reported and skipped.
        #[arg(long, value_enum, default_value = "fail")]
        on_error: bulk::OnError,
        /// Where the savepoint goes (default: `<savepoint_dir>/load-<name>-<time>`).
        #[arg(long)]
        to: Option<PathBuf>,
        /// Adds to this savepoint (a load's, or one taken of the pipeline), replacing it once
        /// complete (or writing the result to `--to`).
        #[arg(long)]
        into: Option<PathBuf>,
    },
    /// Writes a savepoint's state (or broadcast map) out as JSON Lines, CSV or Parquet, in the
    /// format `load` reads.
    Export {
        /// The savepoint directory.
        savepoint: PathBuf,
        /// The keyed state.
        #[arg(long, required_unless_present = "map", conflicts_with = "map")]
        state: Option<String>,
        /// The broadcast map (instead of a keyed state).
        #[arg(long)]
        map: Option<String>,
        /// The format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: bulk::Format,
        /// The file to write (default: standard output; Parquet needs a file).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// A keyed state's kind, on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    /// One value per key.
    Value,
    /// Entries per key.
    Map,
    /// Elements per key.
    List,
}

fn parse_as_of(s: &str) -> Result<crate::query::AsOf, String> {
    s.parse()
}
