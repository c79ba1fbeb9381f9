//! The exit handler: one function that takes a vCPU exit and decides what
//! happens, in one place. It counts landmarks (exits the guest caused, DESIGN
//! §4), applies asynchronous events only there, routes MMIO to the devices and
//! turns fatal exits into a [`RunOutcome`]. It never touches KVM, so tests
//! drive it with made-up exits.
use std::io::Write;

use vm_memory::GuestMemoryMmap;

use crate::devices::{DeviceCtx, Devices, EventState};
use crate::inputs::{ExecPoint, Inputs};
use crate::misbehaviour::{Misbehaviour, Offence};
use crate::outcome::RunOutcome;
use crate::vcpu::Exit;

/// What the vCPU loop does after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Enter the guest again; for an MMIO read, first complete it with this value.
    Resume {
        /// The value an MMIO read yields.
        read_value: Option<u64>,
    },
    /// The run is over.
    Stop(RunOutcome),
}

/// Guest RAM, devices, inputs and the landmark count: everything but the vCPU.
pub struct Machine {
    /// Guest RAM.
    pub memory: GuestMemoryMmap,
    /// The platform devices.
    pub devices: Devices,
    /// Pending events and the armed timer.
    pub events: EventState,
    /// Guest misbehaviour seen so far.
    pub misbehaviour: Misbehaviour,
    inputs: Box<dyn Inputs>,
    landmarks: u64,
}

impl Machine {
    /// A machine over `memory`, printing to `console`, fed by `inputs`.
    pub fn new(memory: GuestMemoryMmap, console: Box<dyn Write + Send>, inputs: Box<dyn Inputs>) -> Self {
        Machine {
            memory,
            devices: Devices::new(console),
            events: EventState::default(),
            misbehaviour: Misbehaviour::default(),
            inputs,
            landmarks: 0,
        }
    }

    /// Landmarks (guest-caused exits) so far.
    pub fn landmarks(&self) -> u64 {
        self.landmarks
    }

    /// Handles one exit taken at guest `rip`.
    pub fn handle_exit(&mut self, exit: Exit, rip: u64) -> Action {
        const RESUME: Action = Action::Resume { read_value: None };
        if exit == Exit::Interrupted {
            return RESUME;
        }
        self.landmarks += 1;
        let point = ExecPoint { landmark: self.landmarks, rip };
        match exit {
            Exit::MmioRead { addr, size } => self.mmio(point, addr, size, None),
            Exit::MmioWrite { addr, size, value } => self.mmio(point, addr, size, Some(value)),
            Exit::IoIn { port } => {
                self.misbehaviour.record(Offence::PortIo, u64::from(port), 0);
                RESUME
            }
            Exit::IoOut { port, value } => {
                self.misbehaviour.record(Offence::PortIo, u64::from(port), value);
                RESUME
            }
            Exit::Hlt => {
                self.misbehaviour.record(Offence::Halt, rip, 0);
                RESUME
            }
            Exit::Shutdown => Action::Stop(RunOutcome::TripleFault { rip }),
            Exit::InternalError { suberror } => Action::Stop(RunOutcome::KvmError {
                detail: format!(
                    "internal error (suberror {suberror}{}) at rip {rip:#x}",
                    if suberror == 1 { ": instruction emulation failed" } else { "" }
                ),
            }),
            Exit::FailEntry { reason } => Action::Stop(RunOutcome::KvmError {
                detail: format!("entry failed (hardware reason {reason:#x})"),
            }),
            Exit::Unexpected { name } => Action::Stop(RunOutcome::KvmError {
                detail: format!("unexpected exit {name} at rip {rip:#x}"),
            }),
            Exit::Interrupted => unreachable!("handled above"),
        }
    }

    fn mmio(&mut self, point: ExecPoint, addr: u64, size: usize, write: Option<u64>) -> Action {
        // Asynchronous events land here, at a landmark, and nowhere else.
        for event in self.inputs.poll_events(point, self.events.armed()) {
            self.events.apply(event);
        }
        let mut ctx = DeviceCtx {
            memory: &self.memory,
            inputs: self.inputs.as_mut(),
            point,
            events: &mut self.events,
            misbehaviour: &mut self.misbehaviour,
        };
        match self.devices.access(addr, size, write, &mut ctx) {
            Ok(value) => Action::Resume { read_value: write.is_none().then_some(value) },
            Err(outcome) => Action::Stop(outcome),
        }
    }
}
