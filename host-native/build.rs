//! Builds the WebAssembly components `cairn` embeds, so building `cairn`
//! needs no manual step:
//! - `cairn_core.wasm`: cairn-core as the `cairn:core` component (`--engine wasm`);
//! - `cairn-wasi.wasm`: the verifier, SQLite inside, importing WASI only
//!   (portable: `cairn verifier export` writes it out for other runtimes);
//! - `cairn-wasi-host-crypto.wasm`: the same with AES-GCM lent by the host,
//!   which `cairn verify` runs.
//!
//! The nested builds use their own target directory (sharing the outer one
//! would deadlock on cargo's lock). libdeflate (in the core) and SQLite (in
//! the verifier) are C, so they need a C compiler for wasm32-wasip2:
//! Debian's clang-19 and wasi-libc, wired here.

use std::path::{Path, PathBuf};
use std::process::Command;

include!("src/component_hash.rs");

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for p in [
        "wit",
        "core/src",
        "core/Cargo.toml",
        "host-wasi/src",
        "host-wasi/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(p).display());
    }
    for var in [
        "CAIRN_COMPONENT_TARGET_DIR",
        "CC_wasm32_wasip2",
        "AR_wasm32_wasip2",
        "CFLAGS_wasm32_wasip2",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    // <target>/<profile>/build/<pkg>/out -> <target>/cairn-component
    let target_dir = std::env::var_os("CAIRN_COMPONENT_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| out_dir.ancestors().nth(4).unwrap().join("cairn-component"));
    let built = target_dir.join(TARGET).join("release");

    // libdeflate (core) and SQLite (verifier) are C: both need the wasm C toolchain.
    let cc = with_wasm_features(wasi_c_toolchain(&target_dir));
    // `cargo rustc --crate-type cdylib`: core's manifest declares only an
    // rlib, because a cdylib package's rlib gets no hash in its file name and
    // builds with different feature sets would overwrite each other's.
    let core = ["-p", "cairn-core", "--lib", "--crate-type", "cdylib"];
    nested_build(&workspace, &target_dir, "rustc", &core, &cc);
    copy(
        &built.join("cairn_core.wasm"),
        &out_dir.join("cairn_core.wasm"),
    );

    let verifier = ["-p", "cairn-wasi", "--bin", "cairn-wasi"];
    nested_build(&workspace, &target_dir, "build", &verifier, &cc);
    copy(
        &built.join("cairn-wasi.wasm"),
        &out_dir.join("cairn-wasi.wasm"),
    );
    let accelerated = [&verifier[..], &["--features", "host-crypto"]].concat();
    nested_build(&workspace, &target_dir, "build", &accelerated, &cc);
    copy(
        &built.join("cairn-wasi.wasm"),
        &out_dir.join("cairn-wasi-host-crypto.wasm"),
    );

    std::fs::write(
        out_dir.join("component_hash.txt"),
        component_source_hash(&workspace),
    )
    .unwrap();
}

fn nested_build(
    workspace: &Path,
    target_dir: &Path,
    verb: &str,
    what: &[&str],
    env: &[(String, String)],
) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([verb, "--locked", "--release", "--target", TARGET])
        .args(what)
        .arg("--target-dir")
        .arg(target_dir)
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
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let status = cmd
        .status()
        .expect("cannot run cargo for the embedded components");
    if !status.success() {
        panic!(
            "building the embedded component ({}) failed. If the error says the {TARGET} \
             target is missing, run `rustup target add {TARGET}`; if a C compiler or \
             wasi-libc header is missing, install clang-19, lld-19, wasi-libc and \
             libclang-rt-19-dev-wasm32 (`bash .ci/setup.sh` does both).",
            what.join(" ")
        );
    }
}

/// Lets clang use the WebAssembly features every runtime cairn names has
/// (wasmtime, V8 under Node, wasmer, WAMR; all in WebAssembly 2.0): 128-bit
/// SIMD, which clang-19 does not enable by default, and bulk memory, whose
/// `memory.copy`/`memory.fill` replace calls into wasi-libc's C loops for
/// the many small copies of zstd, libdeflate and SQLite (Rust code has bulk
/// memory by its target's defaults). Appended to the caller's own flags.
fn with_wasm_features(mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    const FLAGS: &str = "-msimd128 -mbulk-memory";
    const VAR: &str = "CFLAGS_wasm32_wasip2";
    let own = env
        .iter()
        .position(|(k, _)| k == VAR)
        .map(|i| env.remove(i).1)
        .or_else(|| std::env::var(VAR).ok())
        .unwrap_or_default();
    env.push((VAR.into(), format!("{own} {FLAGS}").trim().to_string()));
    env
}

/// The C compiler for SQLite in wasm32-wasip2: the caller's if set, else
/// Debian's clang-19 with a sysroot that maps the wasip2 target onto
/// wasi-libc's wasm32-wasi headers and libraries (without it clang falls
/// back to the host's glibc headers and fails).
fn wasi_c_toolchain(target_dir: &Path) -> Vec<(String, String)> {
    if std::env::var_os("CC_wasm32_wasip2").is_some() {
        return Vec::new();
    }
    let (include, lib) = (
        Path::new("/usr/include/wasm32-wasi"),
        Path::new("/usr/lib/wasm32-wasi"),
    );
    let clang_ok = Command::new("clang-19")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !clang_ok || !include.is_dir() || !lib.is_dir() {
        panic!(
            "cairn embeds SQLite compiled to WebAssembly, which needs clang-19 and wasi-libc: \
             `apt-get install clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32` \
             (`bash .ci/setup.sh` does it), or set CC_wasm32_wasip2, AR_wasm32_wasip2 and \
             CFLAGS_wasm32_wasip2 to a toolchain of your own"
        );
    }
    let sysroot = target_dir.join("wasi-sysroot");
    for (kind, real) in [("include", include), ("lib", lib)] {
        let dir = sysroot.join(kind);
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join(TARGET);
        if std::fs::read_link(&link).ok().as_deref() != Some(real) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(real, &link)
                .unwrap_or_else(|e| panic!("cannot link {}: {e}", link.display()));
        }
    }
    vec![
        ("CC_wasm32_wasip2".into(), "clang-19".into()),
        ("AR_wasm32_wasip2".into(), "llvm-ar-19".into()),
        (
            "CFLAGS_wasm32_wasip2".into(),
            format!("--sysroot={}", sysroot.display()),
        ),
    ]
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
}
