//! Builds the static guest agent (`crates/agent`, linked with `+crt-static`: guest images need
//! no C library) and embeds it in the runtime, so that a plain `cargo build --release` gives an
//! `ignite` whose VMs get a working agent, with nothing else to build or install
//! (`scripts/build-agent.sh` still builds the same binary on its own, for tests and packages).
//!
//! The agent is built by a nested `cargo build` in a target directory of its own
//! (`<target>/agent`, shared with `scripts/build-agent.sh`): different RUSTFLAGS must not
//! invalidate the main build. `IGNITE_BUILD_NO_AGENT=1` embeds nothing (then `IGNITE_AGENT` or
//! an installed agent is needed at run time).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=../agent/src");
    println!("cargo:rerun-if-changed=../agent/Cargo.toml");
    println!("cargo:rerun-if-changed=../../Cargo.lock");
    println!("cargo:rerun-if-env-changed=IGNITE_BUILD_NO_AGENT");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let dest = out.join("ignite-agent");
    println!("cargo:rustc-env=IGNITE_EMBEDDED_AGENT={}", dest.display());
    if std::env::var_os("IGNITE_BUILD_NO_AGENT").is_some_and(|v| !v.is_empty() && v != "0") {
        std::fs::write(&dest, b"").expect("write the empty agent");
        println!("cargo:rustc-env=IGNITE_EMBEDDED_AGENT_SHA256=");
        return;
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest.ancestors().nth(2).expect("the workspace root").to_path_buf();
    // The outer build's target directory: the first ancestor of OUT_DIR that cargo tagged.
    let target_dir = out
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace.join("target"));
    let triple = std::env::var("TARGET").unwrap_or_else(|_| "x86_64-unknown-linux-gnu".into());
    let agent_target = target_dir.join("agent");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&workspace)
        .args(["build", "--quiet", "--release", "--locked", "--offline", "-p", "ignite-agent", "--bin", "ignite-agent"])
        .args(["--target", &triple]);
    // A clean environment: nothing of the outer build (its flags, wrappers, jobserver).
    cmd.env_clear();
    for k in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "TMPDIR"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    // The same settings as scripts/build-agent.sh, so either build finds the other's output.
    cmd.env("CARGO_TARGET_DIR", &agent_target)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s");
    let status = cmd.status().expect("run cargo for the guest agent");
    assert!(status.success(), "building the static guest agent failed (set IGNITE_BUILD_NO_AGENT=1 to skip it)");
    let built = agent_target.join(&triple).join("release").join("ignite-agent");
    std::fs::copy(&built, &dest).expect("copy the guest agent");
    // Its hash names the copy `ignite` writes under the state root; computed here, not in
    // every `ignite` process that starts a VM (1.5 ms each).
    use sha2::Digest;
    let hash = sha2::Sha256::digest(std::fs::read(&dest).expect("read the guest agent"));
    println!("cargo:rustc-env=IGNITE_EMBEDDED_AGENT_SHA256={hash:x}");
}
