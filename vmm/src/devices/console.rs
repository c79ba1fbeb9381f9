//! Console device: the guest names a buffer in one register write (a packed
//! descriptor, ftvm_abi::buf); the bytes go to the outputs. A running hash of
//! everything printed lets runs be compared.

use std::io::Write;

use ftvm_abi::mmio::console::{BASE, WRITE};
use vm_memory::{Bytes, GuestAddress};
use xxhash_rust::xxh3::Xxh3;

use super::{no_such_register, DeviceCtx, MmioDevice, RegisterResult};
use crate::memory::guest_range;
use crate::misbehaviour::Offence;
use crate::snapshot::{Persist, SnapshotError};
use serde::{Deserialize, Serialize};

/// A console sink that keeps everything in memory (tests, benchmarks).
#[derive(Clone, Default)]
pub struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// Everything written so far, as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("no writer panics holding it")).into_owned()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("no writer panics holding it").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The hash and size of everything the guest printed.
#[derive(Default)]
pub struct Console {
    hash: Xxh3,
    bytes_written: u64,
}

impl Console {
    /// Hash of everything the guest printed so far.
    pub fn output_hash(&self) -> u64 {
        self.hash.digest()
    }

    /// Bytes the guest printed so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }
}

/// The console's saved state: its hash so far (the restored console chains on from it) and
/// the bytes printed.
#[derive(Serialize, Deserialize)]
pub struct ConsoleState {
    hash: u64,
    bytes_written: u64,
}

impl Persist for Console {
    type State = ConsoleState;

    fn save(&self) -> ConsoleState {
        ConsoleState { hash: self.output_hash(), bytes_written: self.bytes_written }
    }

    fn restore(state: ConsoleState) -> Result<Self, SnapshotError> {
        Ok(Console { hash: Xxh3::with_seed(state.hash), bytes_written: state.bytes_written })
    }
}

impl MmioDevice for Console {
    fn read(&mut self, offset: u64, ctx: &mut DeviceCtx) -> RegisterResult<u64> {
        ctx.misbehaviour.record(Offence::WriteOnlyRegister, BASE + offset, 0);
        Ok(0)
    }

    fn write(&mut self, offset: u64, value: u64, ctx: &mut DeviceCtx) -> RegisterResult<()> {
        if offset != WRITE {
            no_such_register(ctx, BASE, offset, value);
            return Ok(());
        }
        let Some((addr, len)) = guest_range(ctx.memory, value) else {
            ctx.misbehaviour.record(Offence::BufferOutsideRam, BASE + offset, value);
            return Ok(());
        };
        let mut bytes = vec![0u8; len];
        match ctx.memory.read_slice(&mut bytes, GuestAddress(addr)) {
            Ok(()) => {
                self.hash.update(&bytes);
                self.bytes_written += bytes.len() as u64;
                ctx.outputs.console(&bytes);
            }
            Err(_) => ctx.misbehaviour.record(Offence::BufferOutsideRam, BASE + offset, value),
        }
        Ok(())
    }
}
