//! `eddy new plugin --lang <lang> <name>`: a new plugin directory from the language's template,
//! ready to build, to try with `eddy test` and to run with its own `pipeline.toml`.
//!
//! Templates, SDKs and build scripts come from Eddy's guest files ([`eddy_root`]): the folder
//! `scripts/install-share.sh` installs (the README's first command puts it in
//! `~/.local/share/eddy`), so a project refers to the install and not to a checkout.
//! `guest-sdk/template/` is the Rust template, `guest-sdk/<lang>/template/` the others'.
//! Every file is copied with `{{name}}` replaced by the plugin's name (`{{crate}}`: the name
//! with `-` as `_`, `{{sdk}}`: the Rust SDK's path, `{{root}}`: the guest files' folder), and
//! a file ending in `.tmpl` loses that ending. Other languages build through
//! `scripts/guests/<lang>.sh`, which installs their pinned toolchain; the new directory's
//! `build.sh` calls it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The languages a plugin can be written in.
pub const LANGUAGES: [&str; 5] = ["rust", "js", "python", "go", "c"];

/// Eddy's guest files: `EDDY_ROOT` (a checkout) if set; else the installed folder
/// (`EDDY_SHARE`, default `~/.local/share/eddy`) if it holds them; else the source tree this
/// binary was built from.
pub fn eddy_root() -> PathBuf {
    if let Some(root) = std::env::var_os("EDDY_ROOT") {
        return PathBuf::from(root);
    }
    let share = std::env::var_os("EDDY_SHARE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/eddy")));
    match share {
        Some(share) if share.join("guest-sdk").is_dir() => share,
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

/// Creates `<parent>/<name>` from the template of `lang`; returns the directory and how to
/// build it.
pub fn new_plugin(lang: &str, name: &str, parent: &Path) -> anyhow::Result<(PathBuf, String)> {
    if !LANGUAGES.contains(&lang) {
        bail!(
            "unknown language `{lang}`: choose one of {}",
            LANGUAGES.join(", ")
        );
    }
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "plugin name `{name}`: use lowercase letters, digits and `-`, starting with a letter (e.g. `card-enrich`)"
        );
    }
    let root = eddy_root()
        .canonicalize()
        .context("Eddy's guest files are not found: run scripts/install-share.sh from an Eddy checkout (the README's first command does), or set EDDY_ROOT to the checkout")?;
    let template = match lang {
        "rust" => root.join("guest-sdk/template"),
        other => root.join("guest-sdk").join(other).join("template"),
    };
    if !template.is_dir() {
        bail!(
            "no template for {lang} at {}: install Eddy's guest files again (scripts/install-share.sh), or set EDDY_ROOT to an Eddy checkout",
            template.display()
        );
    }
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} already exists: choose another name or remove it",
            dir.display()
        );
    }
    let words = Words {
        name: name.to_string(),
        crate_name: name.replace('-', "_"),
        sdk: root.join("guest-sdk").display().to_string(),
        root: root.display().to_string(),
    };
    copy_tree(&template, &dir, &words)?;
    // Sample events for `eddy test` and the outcomes the template gives them (`--expect`),
    // the same in every language.
    for sample in ["events.jsonl", "expected.jsonl"] {
        let file = dir.join(sample);
        if !file.exists() {
            std::fs::copy(root.join("guest-sdk/template").join(sample), &file)?;
        }
    }
    let build = if lang == "rust" {
        "./build.sh".to_string()
    } else {
        let script = dir.join("build.sh");
        std::fs::write(
            &script,
            format!(
                "#!/usr/bin/env bash\n\
                 # Builds this plugin into a WebAssembly component: ./{name}.wasm\n\
                 # (installs the pinned {lang} toolchain into ~/.cache/eddy/tools on first use).\n\
                 set -euo pipefail\n\
                 here=\"$(cd \"$(dirname \"${{BASH_SOURCE[0]}}\")\" && pwd)\"\n\
                 bash \"{root}/scripts/guests/{lang}.sh\" build \"$here\" \"$here/{name}.wasm\"\n",
                root = words.root,
            ),
        )?;
        "./build.sh".to_string()
    };
    make_executable(&dir.join("build.sh"))?;
    // Every language's build writes `<name>.wasm` beside the sources.
    write_project_files(&dir, name, &format!("{name}.wasm"), &build)?;
    Ok((dir, build))
}

/// What every project gets besides its code: a pipeline file ready for `eddy streams` and
/// `eddy run` on a local NATS (live reload on rebuild), a `.gitignore`, and a README.
fn write_project_files(dir: &Path, name: &str, wasm: &str, build: &str) -> anyhow::Result<()> {
    let pipeline = format!(
        r#"# {name}: events in on `{name}.in`, the plugin's outputs on `{name}.out`, events it
# cannot handle on `{name}.dlq`. `eddy streams pipeline.toml` creates the streams once;
# `eddy run pipeline.toml` runs it, swapping in each new build of the plugin.

[pipeline]
name = "{name}"
# Keyed state, checkpoints and savepoints on this machine (ignored by git).
state_dir = ".eddy/state"

[nats]
url = "nats://127.0.0.1:4222"

[input]
stream = "{stream}_IN"
subjects = ["{name}.in"]
# The event key: the customer id inside the JSON payload (as in events.jsonl).
key = {{ json = "/customer" }}

[plugin]
path = "{wasm}"

[output]
subject = "{name}.out"

[dead_letter]
subject = "{name}.dlq"

[reload]
# Every rebuild of the plugin is swapped in while the pipeline runs.
watch = "file"
"#,
        stream = name.to_uppercase().replace('-', "_"),
    );
    let readme = format!(
        "# {name}\n\nAn Eddy plugin (WebAssembly component).\n\n\
         ```sh\n\
         eddy dev                                   # all of it: build, NATS, streams, run; rebuilds on save\n\
         {build}                                    # builds {wasm}\n\
         eddy test {wasm} events.jsonl              # one outcome per event, no NATS needed\n\
         eddy test {wasm} events.jsonl --dump-state # and the state it leaves\n\
         eddy test {wasm} events.jsonl --expect expected.jsonl  # fails on a difference\n\
         eddy streams pipeline.toml                 # once, on a NATS server with JetStream\n\
         eddy run pipeline.toml                     # runs it; each rebuild is swapped in\n\
         eddy publish {name}.in --file events.jsonl\n\
         eddy tail {name}.out -f\n\
         ```\n\n\
         Keys are found where `input.key` in `pipeline.toml` says. `expected.jsonl` holds the\n\
         outcomes `eddy test` should print for `events.jsonl`, one per line (as the template\n\
         plugin gives them: change both with your logic); an expected line is compared on the\n\
         fields it names.\n"
    );
    let ignore = "/target/\n/node_modules/\n/.eddy/\n*.wasm\n";
    for (file, text) in [
        ("pipeline.toml", pipeline.as_str()),
        ("README.md", readme.as_str()),
        (".gitignore", ignore),
    ] {
        let path = dir.join(file);
        if !path.exists() {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

struct Words {
    name: String,
    crate_name: String,
    sdk: String,
    root: String,
}

impl Words {
    fn fill(&self, text: &str) -> String {
        text.replace("{{name}}", &self.name)
            .replace("{{crate}}", &self.crate_name)
            .replace("{{sdk}}", &self.sdk)
            .replace("{{root}}", &self.root)
    }
}

fn copy_tree(from: &Path, to: &Path, words: &Words) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name == "target" || file_name == "node_modules" || file_name.ends_with(".wasm") {
            continue;
        }
        let target_name = words.fill(file_name.strip_suffix(".tmpl").unwrap_or(&file_name));
        let target = to.join(target_name);
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target, words)?;
            continue;
        }
        let bytes = std::fs::read(entry.path())?;
        match String::from_utf8(bytes) {
            Ok(text) => std::fs::write(&target, words.fill(&text))?,
            Err(e) => std::fs::write(&target, e.into_bytes())?,
        }
    }
    Ok(())
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if path.is_file() {
        let mut p = std::fs::metadata(path)?.permissions();
        p.set_mode(0o755);
        std::fs::set_permissions(path, p)?;
    }
    Ok(())
}

/// `eddy new plugin`: creates the project and says how to build and try it.
pub fn command(lang: &str, name: &str, dir: &Path) -> anyhow::Result<()> {
    let (created, build) = new_plugin(lang, name, dir)?;
    println!("created {}", created.display());
    println!(
        "build:  cd {} && {build}\ntry it: eddy test {name}.wasm events.jsonl\nrun it: eddy streams pipeline.toml && eddy run pipeline.toml (see README.md)",
        created.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rust_plugin_is_created_with_its_name_filled_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (created, build) = new_plugin("rust", "card-enrich", dir.path()).expect("new");
        assert_eq!(build, "./build.sh");
        let cargo = std::fs::read_to_string(created.join("Cargo.toml")).expect("Cargo.toml");
        assert!(cargo.contains("name = \"card-enrich\""), "{cargo}");
        assert!(!cargo.contains("{{"), "every placeholder filled: {cargo}");
        let script = std::fs::read_to_string(created.join("build.sh")).expect("build.sh");
        assert!(script.contains("card-enrich.wasm"), "{script}");
        assert!(created.join("src/lib.rs").is_file());
        // Ready to run: the pipeline file names the built component and checks out.
        let cfg = crate::config::PipelineConfig::load_remote(&created.join("pipeline.toml"))
            .expect("the generated pipeline file is valid");
        assert_eq!(cfg.pipeline.name, "card-enrich");
        assert!(
            cfg.plugin.path.ends_with("card-enrich.wasm"),
            "{:?}",
            cfg.plugin.path
        );
        assert_eq!(
            cfg.input.key,
            crate::config::KeySource::Json("/customer".into())
        );
        let ignore = std::fs::read_to_string(created.join(".gitignore")).expect(".gitignore");
        assert!(
            ignore.contains("*.wasm") && ignore.contains("/.eddy/"),
            "{ignore}"
        );
        assert!(created.join("README.md").is_file());
        assert!(created.join("expected.jsonl").is_file());
    }

    #[test]
    fn bad_names_languages_and_existing_directories_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = new_plugin("cobol", "x", dir.path())
            .expect_err("refused")
            .to_string();
        assert!(e.contains("rust, js, python, go, c"), "{e}");
        let e = new_plugin("rust", "Bad Name", dir.path())
            .expect_err("refused")
            .to_string();
        assert!(e.contains("lowercase"), "{e}");
        new_plugin("rust", "twice", dir.path()).expect("first");
        let e = new_plugin("rust", "twice", dir.path())
            .expect_err("refused")
            .to_string();
        assert!(e.contains("already exists"), "{e}");
    }
}
