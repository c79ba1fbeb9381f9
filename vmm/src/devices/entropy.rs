//! Entropy device: random bytes from the inputs, into a register or a guest buffer.
use ftvm_abi::mmio::entropy::{BASE, FILL, RANDOM_U64};
use vm_memory::{Bytes, GuestAddress};

use super::{no_such_register, DeviceCtx, MmioDevice, RegisterResult};
use crate::memory::guest_range;
use crate::misbehaviour::Offence;

/// Stateless: every access asks the inputs.
pub struct Entropy;

impl MmioDevice for Entropy {
    fn read(&mut self, offset: u64, ctx: &mut DeviceCtx) -> RegisterResult<u64> {
        Ok(match offset {
            RANDOM_U64 => {
                let mut bytes = [0u8; 8];
                ctx.inputs.entropy(&ctx.at, &mut bytes)?;
                u64::from_le_bytes(bytes)
            }
            _ => no_such_register(ctx, BASE, offset, 0),
        })
    }

    fn write(&mut self, offset: u64, value: u64, ctx: &mut DeviceCtx) -> RegisterResult<()> {
        match offset {
            FILL => {
                let Some((addr, len)) = guest_range(ctx.memory, value) else {
                    ctx.misbehaviour.record(Offence::BufferOutsideRam, BASE + offset, value);
                    return Ok(());
                };
                let mut bytes = vec![0u8; len];
                ctx.inputs.entropy(&ctx.at, &mut bytes)?;
                if ctx.memory.write_slice(&bytes, GuestAddress(addr)).is_err() {
                    ctx.misbehaviour.record(Offence::BufferOutsideRam, BASE + offset, value);
                }
            }
            RANDOM_U64 => ctx.misbehaviour.record(Offence::ReadOnlyRegister, BASE + offset, value),
            _ => {
                no_such_register(ctx, BASE, offset, value);
            }
        }
        Ok(())
    }
}
