//! The components tests run: the sample plugins built from `plugins/` once per process
//! (wasmtime's test-programs pattern, never checked-in binaries), build scripts, the `eddy`
//! binary, and variants of a component.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::*;

/// Directory the sample plugins are built into.
pub fn plugin_target_dir() -> PathBuf {
    std::env::var_os("EDDY_PLUGIN_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            PathBuf::from(home).join(".cache/eddy/plugins-target")
        })
}

/// The sample plugins, built once per process by `scripts/build-plugins.sh`.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| run_build_script("scripts/build-plugins.sh"));
    if let Err(e) = built {
        panic!("{e}");
    }
    plugin_target_dir()
        .join("wasm32-wasip2/plugin")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

/// Runs a build script of the repository (path relative to its root) with the plugin target
/// directory set; the error carries the end of its output.
pub fn run_build_script(script: &str) -> Result<(), String> {
    let script = workspace_root().join(script);
    let out = Command::new("bash")
        .arg(&script)
        .env("EDDY_PLUGIN_TARGET_DIR", plugin_target_dir())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = err.lines().rev().take(20).collect();
    Err(format!(
        "{} failed ({}):\n{}",
        script.display(),
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

/// The `eddy` binary built next to this test binary (`cargo build --bins` first; the README's
/// test command does).
pub fn eddy_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/eddy
    exe.parent()
        .and_then(Path::parent)
        .map(|p| p.join("eddy"))
        .unwrap_or_else(|| PathBuf::from("eddy"))
}

/// The same component with a custom section appended: another version (content hash), the
/// same behaviour.
pub fn variant(wasm: &[u8], n: u32) -> Vec<u8> {
    fn leb(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"eddy-variant";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(&n.to_le_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // a custom section
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}
