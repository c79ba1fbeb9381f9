//! `ftvm`: fault-tolerant virtual machines on Linux/KVM. See `ftvm --help`.
fn main() -> std::process::ExitCode {
    vmm::cli::main()
}
