//! Power device: orderly shutdown, and the report of a fatal guest exception
//! (the guest's ring-0 stub writes vector, error code and RIP, then REPORT).
use ftvm_abi::mmio::power::{BASE, FAULT_ERROR, FAULT_REPORT, FAULT_RIP, FAULT_VECTOR, SHUTDOWN};

use serde::{Deserialize, Serialize};

use super::{no_such_register, DeviceCtx, MmioDevice, RegisterResult};
use crate::misbehaviour::Offence;
use crate::outcome::RunOutcome;
use crate::snapshot::SavedAsIs;

/// The fault report being assembled (also its saved state).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Power {
    vector: u64,
    error_code: u64,
    rip: u64,
}

impl SavedAsIs for Power {}

impl MmioDevice for Power {
    fn read(&mut self, offset: u64, ctx: &mut DeviceCtx) -> RegisterResult<u64> {
        ctx.misbehaviour.record(Offence::WriteOnlyRegister, BASE + offset, 0);
        Ok(0)
    }

    fn write(&mut self, offset: u64, value: u64, ctx: &mut DeviceCtx) -> RegisterResult<()> {
        match offset {
            SHUTDOWN => return Err(RunOutcome::PowerOff { code: value as u32 }),
            FAULT_VECTOR => self.vector = value,
            FAULT_ERROR => self.error_code = value,
            FAULT_RIP => self.rip = value,
            FAULT_REPORT => {
                return Err(RunOutcome::GuestException {
                    vector: self.vector,
                    error_code: self.error_code,
                    rip: self.rip,
                })
            }
            _ => {
                no_such_register(ctx, BASE, offset, value);
            }
        }
        Ok(())
    }
}
