//! The ftvm VMM: KVM, guest memory, the vCPU loop, the platform devices, and
//! the inputs interface record/replay plugs into.
//!
//! Map: [`vm`] assembles a VM and runs the vCPU loop; [`vcpu`] wraps KVM_RUN;
//! [`machine`] is the exit handler; [`devices`] holds one device per file;
//! [`inputs`] is the only source of non-determinism; [`loader`] checks and
//! loads the kernel ELF; [`x86`] builds page tables, GDT, TSS and registers.

pub mod api;
pub mod bench;
pub mod cli;
pub mod devices;
pub mod ft;
pub mod inputs;
pub mod kernel;
pub mod loader;
pub mod machine;
pub mod memory;
pub mod misbehaviour;
pub mod outcome;
pub mod outputs;
pub mod runs;
pub mod signals;
pub mod snapshot;
pub mod tap;
pub mod tasks;
pub mod vcpu;
pub mod vm;
pub mod x86;
