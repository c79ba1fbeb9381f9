//! The `ftvm` CLI, built inside the tests package for the end-to-end tests.
fn main() -> std::process::ExitCode {
    vmm::cli::main()
}
