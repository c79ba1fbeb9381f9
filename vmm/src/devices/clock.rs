//! Clock device: guest monotonic time and wall time, both inputs.
use ftvm_abi::mmio::clock::{BASE, MONOTONIC_NS, WALL_NS};

use super::{no_such_register, DeviceCtx, MmioDevice, RegisterResult};
use crate::misbehaviour::Offence;

/// Stateless: every read asks the inputs.
pub struct Clock;

impl MmioDevice for Clock {
    fn read(&mut self, offset: u64, ctx: &mut DeviceCtx) -> RegisterResult<u64> {
        Ok(match offset {
            MONOTONIC_NS => ctx.inputs.monotonic_ns(&ctx.at)?,
            WALL_NS => ctx.inputs.wall_ns(&ctx.at)?,
            _ => no_such_register(ctx, BASE, offset, 0),
        })
    }

    fn write(&mut self, offset: u64, value: u64, ctx: &mut DeviceCtx) -> RegisterResult<()> {
        ctx.misbehaviour.record(Offence::ReadOnlyRegister, BASE + offset, value);
        Ok(())
    }
}
