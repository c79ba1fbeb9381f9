//! The event register: the pending-event mask (read-to-clear), the guest's
//! idle (a `WAIT` read returns once an event is pending: the machine blocks
//! in the inputs first) and the event page the VMM refreshes with the time on
//! every wait, so the guest's event loop needs no separate clock exit.
use ftvm_abi::mmio::events::{page, BASE, EVENT_PAGE, WAIT, YIELD};
use vm_memory::{Bytes, GuestAddress};

use serde::{Deserialize, Serialize};

use super::{no_such_register, DeviceCtx, MmioDevice, RegisterResult};
use crate::memory::guest_range_of;
use crate::misbehaviour::Offence;
use crate::snapshot::SavedAsIs;

/// The registered event page, if any (also its saved state).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Events {
    event_page: Option<u64>,
}

impl SavedAsIs for Events {}

impl Events {
    /// The machine has already blocked until an event was pending
    /// ([`crate::machine`]: waiting needs every device, to deliver frames).
    fn wait(&mut self, ctx: &mut DeviceCtx) -> RegisterResult<u64> {
        if let Some(addr) = self.event_page {
            let now_ns = ctx.inputs.monotonic_ns(&ctx.at)?;
            // Checked at registration; guest RAM does not shrink.
            let _ = ctx.memory.write_obj(now_ns, GuestAddress(addr + page::MONOTONIC_NS));
        }
        Ok(std::mem::take(&mut ctx.events.pending))
    }
}

impl MmioDevice for Events {
    fn read(&mut self, offset: u64, ctx: &mut DeviceCtx) -> RegisterResult<u64> {
        match offset {
            YIELD => Ok(std::mem::take(&mut ctx.events.pending)),
            WAIT => self.wait(ctx),
            EVENT_PAGE => Ok(self.event_page.unwrap_or(0)),
            _ => Ok(no_such_register(ctx, BASE, offset, 0)),
        }
    }

    fn write(&mut self, offset: u64, value: u64, ctx: &mut DeviceCtx) -> RegisterResult<()> {
        match offset {
            EVENT_PAGE if value == 0 => self.event_page = None,
            EVENT_PAGE => {
                let aligned = value.is_multiple_of(8);
                if aligned && guest_range_of(ctx.memory, value, page::BYTES).is_some() {
                    self.event_page = Some(value);
                } else {
                    self.event_page = None;
                    ctx.misbehaviour.record(Offence::BufferOutsideRam, BASE + offset, value);
                }
            }
            YIELD | WAIT => {
                ctx.misbehaviour.record(Offence::ReadOnlyRegister, BASE + offset, value)
            }
            _ => {
                no_such_register(ctx, BASE, offset, value);
            }
        }
        Ok(())
    }
}
