//! One-shot timer: a deadline against guest monotonic time. Whether it has
//! passed is decided by the inputs at landmarks (an asynchronous event).
use ftvm_abi::mmio::timer::{BASE, DEADLINE_NS};

use super::{no_such_register, DeviceCtx, MmioDevice, RegisterResult};

/// The deadline itself lives in [`super::EventState`], next to the pending mask it feeds.
pub struct Timer;

impl MmioDevice for Timer {
    fn read(&mut self, offset: u64, ctx: &mut DeviceCtx) -> RegisterResult<u64> {
        Ok(match offset {
            DEADLINE_NS => ctx.events.timer_deadline_ns.unwrap_or(0),
            _ => no_such_register(ctx, BASE, offset, 0),
        })
    }

    fn write(&mut self, offset: u64, value: u64, ctx: &mut DeviceCtx) -> RegisterResult<()> {
        match offset {
            DEADLINE_NS => ctx.events.timer_deadline_ns = (value != 0).then_some(value),
            _ => {
                no_such_register(ctx, BASE, offset, value);
            }
        }
        Ok(())
    }
}
