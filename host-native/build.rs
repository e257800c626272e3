//! Builds cairn-core as a wasm32-wasip2 component and embeds it, so building
//! `cairn` needs no manual step. The nested build uses its own target
//! directory (sharing the outer one would deadlock on cargo's lock).

use std::path::{Path, PathBuf};
use std::process::Command;

include!("src/component_hash.rs");

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for p in ["wit", "core/src", "core/Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=CAIRN_COMPONENT_TARGET_DIR");

    // <target>/<profile>/build/<pkg>/out -> <target>/cairn-component
    let target_dir = std::env::var_os("CAIRN_COMPONENT_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| out_dir.ancestors().nth(4).unwrap().join("cairn-component"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--locked",
            "--release",
            "-p",
            "cairn-core",
            "--lib",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1");
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("cannot run cargo for the embedded component");
    if !status.success() {
        panic!(
            "building the cairn-core component failed. If the error says the wasm32-wasip2 \
             target is missing, run `rustup target add wasm32-wasip2` (the README's set-up \
             command does this)."
        );
    }
    let wasm = target_dir.join("wasm32-wasip2/release/cairn_core.wasm");
    copy(&wasm, &out_dir.join("cairn_core.wasm"));
    std::fs::write(
        out_dir.join("component_hash.txt"),
        component_source_hash(&workspace),
    )
    .unwrap();
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
}
