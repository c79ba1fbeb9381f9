//! Booting the guest through the ftvm CLI: the self-test, exit statuses,
//! guest faults, a hostile guest, malformed kernels and determinism.
use ftvm_tests::{ftvm, summary_field};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm-e2e");

#[test]
fn selftest_boots_at_cpl3_and_cpl0() {
    for entry in ["cpl3", "cpl0"] {
        let run = ftvm(FTVM, &["run", "--entry", entry]);
        assert_eq!(run.status, Some(0), "{entry}: {run:?}");
        assert!(run.stdout.contains("selftest ok"), "{entry}: {}", run.stdout);
        assert!(run.stdout.contains("300 timer waits ok"));
    }
}

#[test]
fn console_can_go_to_a_file() {
    let path = std::env::temp_dir().join(format!("ftvm-console-{}.log", std::process::id()));
    let run = ftvm(FTVM, &["run", "--console", path.to_str().unwrap(), "--mem", "64M"]);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(run.status, Some(0), "{run:?}");
    assert!(text.contains("selftest ok") && !run.stdout.contains("selftest ok"));
    assert!(text.contains("64 MiB RAM"));
}

#[test]
fn guest_exceptions_exit_non_zero_and_name_the_vector() {
    for (kind, vector) in [
        ("ud", "vector 6 (#UD"),
        ("pf", "vector 14 (#PF"),
        ("gp", "vector 13 (#GP"),
        ("de", "vector 0 (#DE"),
    ] {
        let run = ftvm(FTVM, &["run", "--cmdline", &format!("role=fault kind={kind}")]);
        assert_eq!(run.status, Some(121), "{kind}: {run:?}");
        assert!(run.stderr.contains(vector), "{kind}: {}", run.stderr);
        assert!(run.stderr.contains("at rip 0x"));
    }
}

#[test]
fn guest_panic_and_bad_command_line() {
    let run = ftvm(FTVM, &["run", "--cmdline", "role=panic"]);
    assert_eq!(run.status, Some(101), "{run:?}");
    assert!(run.stdout.contains("kernel panic") && run.stdout.contains("panics on purpose"));
    let run = ftvm(FTVM, &["run", "--cmdline", "role=nonsense"]);
    assert_eq!(run.status, Some(2), "{run:?}");
    assert!(run.stdout.contains("unknown role"));
}

#[test]
fn hostile_guest_is_survived_and_reported() {
    let run = ftvm(FTVM, &["run", "--cmdline", "role=hostile"]);
    assert_eq!(run.status, Some(122), "the run ends with the guest's triple fault: {run:?}");
    assert!(
        run.stdout.contains("expect a triple fault"),
        "the guest got to its last step: {}",
        run.stdout
    );
    assert!(run.stderr.contains("guest triple fault"), "{}", run.stderr);
    for report in [
        "MMIO accesses where no device lives",
        "device accesses not 8 bytes wide",
        "buffers not inside guest RAM",
        "writes to read-only registers",
    ] {
        assert!(run.stderr.contains(report), "missing `{report}` in:\n{}", run.stderr);
    }
}

#[test]
fn malformed_kernels_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("ftvm-elf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = vmm::kernel::KERNEL_ELF;
    let mut wrong_machine = good.to_vec();
    wrong_machine[18] = 0xb7; // EM_AARCH64
    let mut outside_ram = good.to_vec();
    // First program header's p_paddr (e_phoff is 64 in our kernel) moved to 4 GiB.
    outside_ram[64 + 24..64 + 32].copy_from_slice(&(4u64 << 30).to_le_bytes());
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", good[..good.len() - 100].to_vec(), "truncated?"),
        ("machine", wrong_machine, "not x86_64"),
        ("outside", outside_ram, "outside the kernel area"),
        ("text", b"hello".to_vec(), "too short for an ELF header"),
    ];
    for (name, bytes, message) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let run = ftvm(FTVM, &["run", "--kernel", path.to_str().unwrap()]);
        assert_eq!(run.status, Some(120), "{name}: {run:?}");
        assert!(
            run.stderr.contains("bad kernel image") && run.stderr.contains(message),
            "{name}: {}",
            run.stderr
        );
    }
    let missing = ftvm(FTVM, &["run", "--kernel", dir.join("absent").to_str().unwrap()]);
    assert_eq!(missing.status, Some(120));
    assert!(missing.stderr.contains("cannot read the kernel image"), "{}", missing.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_memory_sizes_are_refused() {
    for size in ["1M", "4G", "12345", "lots"] {
        let run = ftvm(FTVM, &["run", "--mem", size]);
        assert_ne!(run.status, Some(0), "{size}: {run:?}");
        assert!(
            run.stderr.contains("guest RAM") || run.stderr.contains("not a size"),
            "{size}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_deterministic_guest_runs_identically_twice() {
    let runs: Vec<_> =
        (0..2).map(|_| ftvm(FTVM, &["run", "--cmdline", "role=compute rounds=300"])).collect();
    for run in &runs {
        assert_eq!(run.status, Some(0), "{run:?}");
    }
    for key in ["landmarks", "console", "memory", "vcpu"] {
        let first = summary_field(&runs[0].stderr, key).expect("summary line");
        assert_eq!(Some(first), summary_field(&runs[1].stderr, key), "{key} differs");
    }
    let landmarks: u64 = summary_field(&runs[0].stderr, "landmarks").unwrap().parse().unwrap();
    assert!(landmarks > 300, "one yield per round at least: {landmarks}");
}
