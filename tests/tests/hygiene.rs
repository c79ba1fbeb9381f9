//! Source-level promises that a grep can check.
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// DESIGN §4: every value from the outside world enters through the inputs
/// module. The host clock, host sleeps and host randomness are read in
/// vmm/src/inputs/live.rs and nowhere else in the VMM.
#[test]
fn host_clock_timers_and_randomness_are_read_in_one_module() {
    let vmm_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm/src");
    let mut files = Vec::new();
    rust_files(&vmm_src, &mut files);
    let forbidden = [
        "Instant::",
        "SystemTime",
        "thread::sleep",
        "getrandom",
        "rand::",
        "clock_gettime",
        "rdtsc",
    ];
    let mut offenders = Vec::new();
    for file in &files {
        if file.ends_with("inputs/live.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for word in forbidden {
            if text.contains(word) {
                offenders.push(format!("{}: {word}", file.display()));
            }
        }
    }
    assert!(files.len() > 10, "found the VMM sources");
    assert!(offenders.is_empty(), "outside-world reads outside inputs/live.rs: {offenders:#?}");
    let live = std::fs::read_to_string(vmm_src.join("inputs/live.rs")).unwrap();
    assert!(live.contains("Instant::now") && live.contains("getrandom"));
}

/// PLATFORM.md: RDTSC, RDTSCP, RDPID, RDRAND, RDSEED, CPUID and XGETBV return
/// host values and cannot be intercepted; the guest kernel must not contain them.
#[test]
fn the_guest_kernel_has_no_uninterceptable_instructions() {
    let elf = std::env::temp_dir().join(format!("ftvm-kernel-{}.elf", std::process::id()));
    std::fs::write(&elf, vmm::kernel::KERNEL_ELF).unwrap();
    let output = std::process::Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", "-M", "intel"])
        .arg(&elf)
        .output()
        .expect("objdump is needed to disassemble the guest: apt-get install binutils");
    std::fs::remove_file(&elf).unwrap();
    assert!(output.status.success());
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(listing.lines().count() > 1000, "disassembled the kernel");
    let forbidden = ["rdtsc", "rdtscp", "rdpid", "rdrand", "rdseed", "cpuid", "xgetbv"];
    let hits: Vec<&str> = listing
        .lines()
        .filter(|line| {
            let mnemonic =
                line.split('\t').nth(1).unwrap_or("").split_whitespace().next().unwrap_or("");
            forbidden.contains(&mnemonic)
        })
        .collect();
    assert!(hits.is_empty(), "the guest executes host-only instructions: {hits:#?}");
}
