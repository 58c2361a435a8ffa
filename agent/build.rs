//! Builds the eBPF programs (`ebpf/programs`, their own workspace) for
//! `bpfel-unknown-none` with the nightly toolchain, `-Z build-std=core` and
//! `bpf-linker`, and leaves the object in `OUT_DIR` for `include_bytes!`.
//!
//! The build never skips eBPF: if the object cannot be built, the agent does
//! not build either, and this says why and how to fix it (`cargo xtask
//! setup` installs rust-src for nightly and bpf-linker).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("agent/ is in the workspace").to_path_buf();
    let ebpf = root.join("ebpf/programs");
    let common = root.join("ebpf/common");
    for p in [ebpf.join("src"), ebpf.join("Cargo.toml"), common.join("src"), common.join("Cargo.toml")] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out.join("ebpf-target");

    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(&ebpf);
    // Nothing of the host build may leak into the BPF build: not its
    // toolchain, its target dir, or its flags (e.g. a sanitizer).
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    for (k, _) in env::vars_os() {
        if k.to_string_lossy().starts_with("CARGO_PROFILE_") || k.to_string_lossy().starts_with("CARGO_CFG_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=2\u{1f}-Clink-arg=--btf");
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => fail(&format!("cannot run rustup ({e})")),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
        fail(&format!("building the eBPF programs failed:\n{}", tail.join("\n")));
    }
    let object = target_dir.join("bpfel-unknown-none/release/agora-ebpf");
    if !object.exists() {
        fail(&format!("the eBPF build succeeded but {} is missing", object.display()));
    }
    std::fs::copy(&object, out.join("agora-ebpf.o"))
        .unwrap_or_else(|e| fail(&format!("cannot copy the eBPF object: {e}")));
}

fn fail(why: &str) -> ! {
    panic!(
        "\n\nagora-agent embeds its eBPF programs and cannot be built without them.\n{why}\n\n\
         It needs the nightly toolchain with rust-src and bpf-linker built against nightly's LLVM;\n\
         `cargo xtask setup` installs them.\n"
    );
}
