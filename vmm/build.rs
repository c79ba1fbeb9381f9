//! Builds the guest kernel (guest/kernel, its own workspace) for
//! x86_64-unknown-none with a nested cargo, so that a plain `cargo build`,
//! `cargo test` or `cargo run` at the root embeds a fresh guest ELF.
//!
//! Pitfalls handled (DESIGN §9): the nested build gets its own target dir
//! under OUT_DIR (sharing the outer one deadlocks on cargo's lock); the outer
//! build's RUSTFLAGS and wrappers are removed from its environment (coverage or
//! clippy flags break a no_std guest); rerun triggers come from the nested
//! build's dep-info file plus the guest manifests, never from a folder that
//! holds the nested target dir.
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-none";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().expect("vmm/ lives in the workspace root");
    let kernel_dir = root.join("guest/kernel");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.join("guest-target");

    if !build_kernel(&kernel_dir, &target_dir) {
        // The usual cause on a fresh machine: the target is not installed yet.
        if install_target() && build_kernel(&kernel_dir, &target_dir) {
            // built after installing the target
        } else {
            panic!(
                "building the guest kernel failed (see the errors above). If the target is \
                 missing, run: rustup target add {GUEST_TARGET}"
            );
        }
    }

    let elf = target_dir.join(GUEST_TARGET).join("release/ftvm-kernel");
    println!("cargo:rustc-env=FTVM_KERNEL_ELF={}", elf.display());
    for manifest in [
        "guest/kernel/Cargo.toml",
        "guest/kernel/Cargo.lock",
        "guest/kernel/link.ld",
        "guest/kernel/build.rs",
        "guest/abi/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(manifest).display());
    }
    emit_dep_info_triggers(&elf.with_extension("d"));
}

fn build_kernel(kernel_dir: &Path, target_dir: &Path) -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(kernel_dir)
        .args(["build", "--release", "--target", GUEST_TARGET, "--target-dir"])
        .arg(target_dir);
    for leaking in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(leaking);
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_FEATURE_") || key.starts_with("CARGO_CFG_") {
            command.env_remove(key);
        }
    }
    match command.status() {
        Ok(status) => status.success(),
        Err(error) => panic!("could not run cargo for the guest kernel: {error}"),
    }
}

fn install_target() -> bool {
    println!("cargo:warning=installing the {GUEST_TARGET} target with rustup");
    Command::new("rustup")
        .args(["target", "add", GUEST_TARGET])
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Every source file the kernel build read becomes a rerun trigger.
fn emit_dep_info_triggers(dep_info: &Path) {
    let Ok(text) = std::fs::read_to_string(dep_info) else {
        return;
    };
    let Some((_, deps)) = text.split_once(": ") else {
        return;
    };
    // Paths are space separated; a literal space is escaped as "\ ".
    let joined = deps.replace("\\ ", "\u{0}");
    for path in joined.split_whitespace() {
        println!("cargo:rerun-if-changed={}", path.replace('\u{0}', " "));
    }
}
