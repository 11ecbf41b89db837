//! Pipeline configuration: the TOML file an operator writes, parsed and validated before
//! anything starts.
//!
//! Owns: the shape of `pipeline.toml`, its defaults, and every check that can be made without
//! a network connection. Errors name the file, the field and the fix. It never connects to
//! NATS or opens state: checks that need the server (streams exist, subjects are captured)
//! belong to `transport`.

mod checkpoint;
mod cluster;
mod core;
mod lookup;
mod sections;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use checkpoint::{CheckpointConfig, CheckpointStore, DedupeCheck, S3Config};
pub use cluster::ClusterConfig;
pub use core::{
    DeadLetterConfig, InputConfig, KeySource, LimitsConfig, MetricsConfig, NatsConfig,
    OutputConfig, PipelineSection, PluginConfig, StateConfig, TtlOverride, TtlUpdateName,
    TtlVisibilityName,
};
pub use lookup::{
    CacheConfig, CacheMode, FailurePolicy, LookupStoreConfig, LookupsConfig, OrderMode,
    RetryConfig, RetryOn, StoreKind,
};
pub use sections::{
    BroadcastInputConfig, ConsoleConfig, PartitionsConfig, QueryConfig, ReloadConfig, ReloadWatch,
};

/// A whole pipeline: where events come from, which plugin handles them, where results go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name and state settings.
    pub pipeline: PipelineSection,
    /// How to reach NATS.
    #[serde(default)]
    pub nats: NatsConfig,
    /// The keyed input.
    pub input: InputConfig,
    /// The plugin that handles events.
    pub plugin: PluginConfig,
    /// Where outputs are published.
    pub output: OutputConfig,
    /// Where events that could not be handled are published, with the reason.
    pub dead_letter: DeadLetterConfig,
    /// Sandbox budgets for the plugin.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The Prometheus metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Keyed state settings: TTL overrides, background cleanup.
    #[serde(default)]
    pub state: StateConfig,
    /// Checkpoints: how often, how many kept, where.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Broadcast inputs by name (`[broadcast.rules]`): every host reads all of each.
    #[serde(default)]
    pub broadcast: BTreeMap<String, BroadcastInputConfig>,
    /// Lookup stores by name (`[lookup.profiles]`).
    #[serde(default)]
    pub lookup: BTreeMap<String, LookupStoreConfig>,
    /// How events wait for their lookups: capacity and output order.
    #[serde(default)]
    pub lookups: LookupsConfig,
    /// Hot reload of the plugin.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Queryable state endpoints.
    #[serde(default)]
    pub query: QueryConfig,
    /// The operations console (`eddy console`).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Which partitions of the key space this host owns.
    #[serde(default)]
    pub partitions: PartitionsConfig,
    /// Partitions that move between hosts by themselves (leases in NATS KV).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Set on the copy of the configuration that runs one partition in cluster mode (never
    /// read from the file): names that partition's checkpoints in the store.
    #[serde(skip)]
    pub run_partition: Option<u32>,
}

/// A configuration error: which file, which field, what is wrong and how to fix it.
#[derive(Debug)]
pub struct ConfigError {
    /// The config file, if it came from one.
    pub file: Option<PathBuf>,
    /// The dotted field name (`input.batch`).
    pub field: String,
    /// What is wrong, and the fix.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}: `{}`: {}", file.display(), self.field, self.message),
            None => write!(f, "`{}`: {}", self.field, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl PipelineConfig {
    /// Reads, parses and validates a pipeline file. Relative paths in it are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let config = PipelineConfig::load_remote(path)?;
        config.validate_plugin().map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })?;
        Ok(config)
    }

    /// [`PipelineConfig::load`] for commands that only talk to running hosts (`eddy status`,
    /// `eddy deploy`, `eddy state`): the plugin file need not be on this machine.
    pub fn load_remote(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            field: "(file)".into(),
            message: format!("cannot read the pipeline file: {e}; check the path"),
        })?;
        let mut config = PipelineConfig::parse(&text).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate_files().map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })?;
        Ok(config)
    }

    /// Parses and validates TOML text (paths stay as written).
    pub fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
        let config: PipelineConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: None,
            field: toml_error_field(&e, text),
            message: format!(
                "{}\nsee examples/fraud/pipeline.toml for a complete, commented file",
                e.to_string().trim_end()
            ),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        if self.pipeline.state_dir.is_relative() {
            self.pipeline.state_dir = base.join(&self.pipeline.state_dir);
        }
        if let Some(dir) = &self.checkpoint.dir
            && dir.is_relative()
        {
            self.checkpoint.dir = Some(base.join(dir));
        }
        if let Some(dir) = &self.checkpoint.savepoint_dir
            && dir.is_relative()
        {
            self.checkpoint.savepoint_dir = Some(base.join(dir));
        }
        if self.plugin.path.is_relative() {
            self.plugin.path = base.join(&self.plugin.path);
        }
        let tls_files = [
            &mut self.query.tls_cert,
            &mut self.query.tls_key,
            &mut self.console.tls_cert,
            &mut self.console.tls_key,
        ];
        for f in tls_files.into_iter().flatten() {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        for (_, file) in self.nats.files() {
            if let Some(f) = file
                && f.is_relative()
            {
                *f = base.join(&*f);
            }
        }
    }

    /// Whether the plugin's `prepare` plans lookups: some lookup store has no `plan` in the
    /// file. Otherwise the host makes no instance of the plugin for planning.
    pub fn prepare_plans_lookups(&self) -> bool {
        self.lookup.values().any(|store| store.plan.is_empty())
    }

    /// Checks that need the plugin file: it exists.
    pub fn validate_plugin(&self) -> Result<(), ConfigError> {
        if !self.plugin.path.is_file() {
            return Err(err(
                "plugin.path",
                format!(
                    "no plugin file at {}; build the plugin (`./build.sh` in a project made by `eddy new plugin`) or fix the path",
                    self.plugin.path.display()
                ),
            ));
        }
        Ok(())
    }

    /// Checks that need the file system besides the plugin: the credential and certificate
    /// files exist.
    pub fn validate_files(&self) -> Result<(), ConfigError> {
        let mut nats = self.nats.clone();
        for (field, file) in nats.files() {
            if let Some(f) = file
                && !f.is_file()
            {
                return Err(err(
                    field,
                    format!(
                        "no file at {}; fix the path (relative paths start at the pipeline file)",
                        f.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks that need nothing but the config itself: each section checks itself, then what
    /// spans sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.pipeline.validate()?;
        self.nats.validate()?;
        self.input.validate()?;
        self.output.validate()?;
        self.dead_letter.validate()?;
        self.limits.validate()?;
        self.state.validate()?;
        self.metrics.validate()?;
        self.checkpoint.validate()?;
        for (name, b) in &self.broadcast {
            b.validate(name)?;
        }
        for (name, store) in &self.lookup {
            store.validate(name)?;
        }
        self.lookups.validate()?;
        self.reload.validate()?;
        self.query.validate()?;
        self.console.validate()?;
        self.partitions.validate()?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
            if self.partitions.owned.is_some() {
                return Err(err(
                    "partitions.owned",
                    "is set, but with [cluster] partitions move between hosts by themselves; remove partitions.owned".into(),
                ));
            }
            if let KeySource::SubjectToken(i) = self.input.key
                && !cluster.keeps_key_token()
            {
                return Err(err(
                    "input.key",
                    format!(
                        "is subject token {i}, but cluster.partition_subject `{}` stores events without their key token; take the key from the payload or a header (e.g. input.key = {{ json = \"/customer\" }}), or keep the token with a partition_subject ending in `.>`",
                        cluster.partition_subject
                    ),
                ));
            }
            // A partition's next owner restores what the pointer names from the store: on
            // another host's disk it would find nothing, and start from empty state.
            if self.checkpoint.store == CheckpointStore::Local {
                return Err(err(
                    "checkpoint.store",
                    "is \"local\" with [cluster]: a partition that moves restores its checkpoint on another host, which cannot read this one's disk; use \"nats\" (the default) or \"s3\"".into(),
                ));
            }
            if self.query.http.is_some() && !self.query.nats {
                return Err(err(
                    "query.http",
                    "is set with [cluster] and query.nats = false: a cluster host answers HTTP queries through the pipeline's NATS query service; set query.nats = true".into(),
                ));
            }
        }
        self.check_no_loop()?;
        if !self
            .pipeline
            .key_groups
            .is_multiple_of(self.partitions.count)
        {
            return Err(err(
                "partitions.count",
                format!(
                    "{} does not divide pipeline.key_groups ({}); a partition must own whole key groups",
                    self.partitions.count, self.pipeline.key_groups
                ),
            ));
        }
        Ok(())
    }

    /// Refuses outputs that the pipeline would read again as input: one event would become
    /// endlessly many.
    fn check_no_loop(&self) -> Result<(), ConfigError> {
        let mut inputs: Vec<(String, &String)> = self
            .input
            .subjects
            .iter()
            .map(|s| ("input.subjects".to_string(), s))
            .collect();
        for (name, b) in &self.broadcast {
            inputs.extend(
                b.subjects
                    .iter()
                    .map(|s| (format!("broadcast.{name}.subjects"), s)),
            );
        }
        for (in_field, pattern) in inputs {
            for (field, subject) in [
                ("output.subject", &self.output.subject),
                ("dead_letter.subject", &self.dead_letter.subject),
            ] {
                if subject_matches(pattern, subject) {
                    return Err(err(
                        field,
                        format!(
                            "`{subject}` is read back by {in_field} `{pattern}`: every message sent there would be handled again, forever; send it to a subject no input captures"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Where the live database lives: `<state_dir>/db`, rebuilt from the newest checkpoint at
    /// every start.
    pub fn db_dir(&self) -> PathBuf {
        self.pipeline.state_dir.join("db")
    }

    /// Where checkpoints are kept.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.checkpoint
            .dir
            .clone()
            .unwrap_or_else(|| self.pipeline.state_dir.join("checkpoints"))
    }

    /// This configuration narrowed to running partition `p` alone (cluster mode): its own
    /// state directory, durable consumer, input subject, checkpoint names, and no HTTP
    /// endpoint of its own.
    pub fn for_partition(&self, p: u32) -> PipelineConfig {
        let mut c = self.clone();
        c.run_partition = Some(p);
        c.partitions.owned = Some(vec![p]);
        c.pipeline.state_dir = self.pipeline.state_dir.join(format!("p{p}"));
        if let Some(dir) = &self.checkpoint.dir {
            c.checkpoint.dir = Some(dir.join(format!("p{p}")));
        }
        c.input.consumer = Some(format!("{}-p{p}", self.consumer_name()));
        if let Some(cluster) = &self.cluster {
            c.input.subjects = vec![cluster.subject_of(p)];
        }
        c.query.http = None;
        c
    }

    /// Where this pipeline's (or this partition's) checkpoints are named in the store:
    /// `<pipeline>/` or `<pipeline>/p<N>/`.
    pub fn checkpoint_prefix(&self) -> String {
        match self.run_partition {
            Some(p) => format!("{}/p{p}/", self.pipeline.name),
            None => format!("{}/", self.pipeline.name),
        }
    }

    /// The pipeline's checkpoints on this machine.
    pub fn checkpoints(&self) -> crate::checkpoint::Checkpoints {
        crate::checkpoint::Checkpoints::new(
            &self.checkpoint_dir(),
            &self.pipeline.state_dir.join("staging"),
            &self.pipeline.name,
            self.checkpoint.retain,
        )
        .with_retention(self.checkpoint.retention())
    }

    /// Where a savepoint's cut waits while it is written (a hard-linked copy of the state,
    /// under the state directory, removed when written and at every start).
    pub fn savepoint_staging_dir(&self) -> PathBuf {
        self.pipeline.state_dir.join("savepoint-staging")
    }

    /// Where savepoints are written by default.
    pub fn savepoint_dir(&self) -> PathBuf {
        self.checkpoint
            .savepoint_dir
            .clone()
            .unwrap_or_else(|| self.pipeline.state_dir.join("savepoints"))
    }

    /// The NATS subject prefix of this pipeline's control requests.
    pub fn control_subject(&self) -> String {
        format!("eddy.ctl.{}", self.pipeline.name)
    }

    /// The durable consumer name.
    pub fn consumer_name(&self) -> &str {
        self.input
            .consumer
            .as_deref()
            .unwrap_or(&self.pipeline.name)
    }

    /// Whether the plugin may publish to `subject`.
    pub fn output_allowed(&self, subject: &str) -> bool {
        subject == self.output.subject
            || self
                .output
                .allow
                .iter()
                .any(|p| subject_matches(p, subject))
    }
}

fn err(field: &str, message: String) -> ConfigError {
    ConfigError {
        file: None,
        field: field.to_string(),
        message,
    }
}

/// Names of pipelines, streams and consumers: what JetStream accepts in a name.
fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let bad = name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'));
    if bad {
        return Err(err(
            field,
            format!(
                "`{name}` is not a valid name; use letters, digits, `-` and `_` (no dots, spaces or wildcards)"
            ),
        ));
    }
    Ok(())
}

/// Checks that `subject` is a NATS subject (dot-separated, no empty tokens or spaces), literal
/// unless `wildcards`; the error names `field`.
pub(crate) fn check_subject(
    field: &str,
    subject: &str,
    wildcards: bool,
) -> Result<(), ConfigError> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let empty = subject.is_empty() || tokens.iter().any(|t| t.is_empty());
    let space = subject.chars().any(char::is_whitespace);
    if empty || space {
        return Err(err(
            field,
            format!("`{subject}` is not a NATS subject; use dot-separated tokens like `txn.in`"),
        ));
    }
    let has_wild = tokens.iter().any(|t| *t == "*" || *t == ">");
    if has_wild && !wildcards {
        return Err(err(
            field,
            format!("`{subject}` has a wildcard; a publish subject must be literal"),
        ));
    }
    if let Some(pos) = tokens.iter().position(|t| *t == ">")
        && pos != tokens.len() - 1
    {
        return Err(err(
            field,
            format!("`{subject}`: `>` may only be the last token"),
        ));
    }
    Ok(())
}

/// NATS subject matching with `*` (one token) and `>` (one or more trailing tokens).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Best effort at naming the offending field from a TOML error: the key path toml reports
/// in its message, else the key on the line the error points at, under its `[section]`
/// (`input.batch`), else the line and column.
fn toml_error_field(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message();
    // serde's messages: "missing field `stream`", "unknown field `bacth`, expected ..."
    for marker in ["missing field `", "unknown field `", "unknown variant `"] {
        if let Some(start) = msg.find(marker) {
            let rest = &msg[start + marker.len()..];
            if let Some(end) = rest.find('`') {
                return rest[..end].to_string();
            }
        }
    }
    let Some(span) = e.span() else {
        return "(document)".into();
    };
    let at = span.start.min(text.len());
    let before = &text[..at];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let section = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    match line.split_once('=') {
        Some((key, _))
            if !line.trim_start().starts_with('[') && !key.trim().trim_matches('"').is_empty() =>
        {
            let key = key.trim().trim_matches('"');
            match section {
                Some(s) => format!("{s}.{key}"),
                None => key.to_string(),
            }
        }
        _ => format!("line {line_no}, column {}", at - line_start + 1),
    }
}

#[cfg(test)]
mod tests;
