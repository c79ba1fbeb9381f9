//! The exit handler: one function that takes a vCPU exit and decides what
//! happens, in one place. It counts landmarks (exits the guest caused, DESIGN
//! §4), applies asynchronous events only there, routes MMIO to the devices and
//! turns fatal exits into a [`RunOutcome`]. It never touches KVM, so tests
//! drive it with made-up exits.
use crate::memory::GuestRam;
use kvm_bindings::kvm_regs;

use crate::devices::virtio::QueueFault;
use crate::devices::{DeviceCtx, DeviceSet, Devices, DevicesState, EventState};
use crate::inputs::{AsyncEvent, At, AtLandmark, ExecPoint, InputError, Inputs};
use crate::misbehaviour::{Misbehaviour, Offence};
use crate::outcome::RunOutcome;
use crate::outputs::Outputs;
use crate::vcpu::Exit;
use ftvm_abi::mmio;

/// The context a device works in, borrowed field by field from a
/// [`Machine`] so the devices themselves stay borrowable.
macro_rules! device_ctx {
    ($machine:ident, $at:expr) => {
        DeviceCtx {
            memory: &$machine.memory,
            inputs: $machine.inputs.as_mut(),
            outputs: $machine.outputs.as_mut(),
            at: $at,
            events: &mut $machine.events,
            misbehaviour: &mut $machine.misbehaviour,
        }
    };
}

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
    /// The log being replayed ends before this exit (the exit is not handled, nor counted):
    /// a backup goes live and handles it again with live inputs and outputs
    /// ([`Machine::switch_io`]); any other replay ends with [`InputError::LogEnded`].
    LogEnded {
        /// How far the log covers.
        covered_landmark: u64,
        /// The landmark of this exit.
        landmark: u64,
    },
}

/// Guest RAM, devices, inputs, outputs and the landmark count: everything
/// but the vCPU.
pub struct Machine {
    /// Guest RAM.
    pub memory: GuestRam,
    /// The devices.
    pub devices: Devices,
    /// Pending events and the armed timer.
    pub events: EventState,
    /// Guest misbehaviour seen so far.
    pub misbehaviour: Misbehaviour,
    inputs: Box<dyn Inputs>,
    outputs: Box<dyn Outputs>,
    landmarks: u64,
}

impl Machine {
    /// A machine over `memory` with the devices in `set`, fed by `inputs`,
    /// its output going to `outputs`.
    pub fn new(
        memory: GuestRam,
        set: DeviceSet,
        inputs: Box<dyn Inputs>,
        outputs: Box<dyn Outputs>,
    ) -> Self {
        let (devices, events) = (Devices::new(set), EventState::default());
        Machine::restore(memory, devices, events, 0, inputs, outputs)
    }

    /// The inputs, e.g. to close a recording at the end of the run.
    pub fn inputs_mut(&mut self) -> &mut dyn Inputs {
        self.inputs.as_mut()
    }

    /// A machine restored from a snapshot: `devices` and `events` as saved, `landmarks` so far.
    pub fn restore(
        memory: GuestRam,
        devices: Devices,
        events: EventState,
        landmarks: u64,
        inputs: Box<dyn Inputs>,
        outputs: Box<dyn Outputs>,
    ) -> Self {
        Machine {
            memory,
            devices,
            events,
            misbehaviour: Misbehaviour::default(),
            inputs,
            outputs,
            landmarks,
        }
    }

    /// The devices' state, the pending events and the landmark count, for a snapshot.
    pub fn save(&self) -> (DevicesState, EventState, u64) {
        (self.devices.save(), self.events, self.landmarks)
    }

    /// Replaces the inputs and outputs (a backup going live); returns the old ones.
    pub fn switch_io(
        &mut self,
        inputs: Box<dyn Inputs>,
        outputs: Box<dyn Outputs>,
    ) -> (Box<dyn Inputs>, Box<dyn Outputs>) {
        let inputs = std::mem::replace(&mut self.inputs, inputs);
        (inputs, std::mem::replace(&mut self.outputs, outputs))
    }

    /// Landmarks (guest-caused exits) so far.
    pub fn landmarks(&self) -> u64 {
        self.landmarks
    }

    /// Handles one exit; `regs` are the vCPU's registers there.
    pub fn handle_exit(&mut self, exit: Exit, regs: &kvm_regs) -> Action {
        let rip = regs.rip;
        const RESUME: Action = Action::Resume { read_value: None };
        if exit == Exit::Interrupted {
            return RESUME;
        }
        let landmark = self.landmarks + 1;
        let at = At { point: ExecPoint { landmark, rip }, regs: *regs };
        let decided = self.inputs.at_landmark(&at);
        if let Ok(AtLandmark::LogEnded { covered_landmark }) = decided {
            return Action::LogEnded { covered_landmark, landmark };
        }
        self.landmarks = landmark;
        match decided {
            Ok(AtLandmark::Run) => {
                let action = self.handle(exit, at);
                self.outputs.exit_done(landmark);
                action
            }
            // Not handled, so not done: a replay learns that the run ended here from the end
            // of the log, not from a claim that this exit is complete.
            Ok(AtLandmark::End(outcome)) => Action::Stop(outcome),
            Ok(AtLandmark::LogEnded { .. }) => unreachable!("returned above"),
            Err(error) => Action::Stop(error.into()),
        }
    }

    fn handle(&mut self, exit: Exit, at: At) -> Action {
        const RESUME: Action = Action::Resume { read_value: None };
        let rip = at.point.rip;
        match exit {
            Exit::MmioRead { addr, size } => self.mmio(at, addr, size, None),
            Exit::MmioWrite { addr, size, value } => self.mmio(at, addr, size, Some(value)),
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

    fn mmio(&mut self, at: At, addr: u64, size: usize, write: Option<u64>) -> Action {
        match self.mmio_access(at, addr, size, write) {
            Ok(value) => Action::Resume { read_value: write.is_none().then_some(value) },
            Err(outcome) => Action::Stop(outcome),
        }
    }

    fn mmio_access(
        &mut self,
        at: At,
        addr: u64,
        size: usize,
        write: Option<u64>,
    ) -> Result<u64, RunOutcome> {
        // Asynchronous events land here, at a landmark, and nowhere else.
        let armed = self.devices.armed(&self.events, &self.memory);
        let events = self.inputs.poll_events(&at, armed)?;
        self.apply_events(events, at)?;
        if Devices::is_wait(addr, size, write) && self.events.pending == 0 {
            // The guest idles: block until something arrives, then apply it here.
            let armed = self.devices.armed(&self.events, &self.memory);
            let events = self.inputs.wait_events(&at, armed)?;
            self.apply_events(events, at)?;
        }
        let mut ctx = device_ctx!(self, at);
        self.devices.access(addr, size, write, &mut ctx)
    }

    /// Applies asynchronous events: the one place they change guest-visible state.
    fn apply_events(&mut self, events: Vec<AsyncEvent>, at: At) -> Result<(), RunOutcome> {
        for event in events {
            match event {
                AsyncEvent::TimerExpired => {
                    self.events.pending |= mmio::events::TIMER;
                    self.events.timer_deadline_ns = None;
                }
                AsyncEvent::FrameReceived(frame) => {
                    let Some(net) = self.devices.net.as_mut() else {
                        return Err(InputError::LogCorrupt(
                            "a frame arrived for a guest without a NIC".into(),
                        )
                        .into());
                    };
                    let mut ctx = device_ctx!(self, at);
                    match net.deliver(&frame, &mut ctx) {
                        Ok(()) => {}
                        Err(QueueFault::Guest) => net.needs_reset(&mut ctx),
                        Err(QueueFault::Fatal(outcome)) => return Err(outcome),
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ftvm_abi::mmio::{clock, console, entropy, events, power, timer};
    use proptest::prelude::*;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::console::SharedBuffer as SharedSink;
    use crate::inputs::fake::FakeInputs;
    use crate::inputs::InputError;

    const RAM: u64 = 16 << 20;

    fn outputs() -> crate::outputs::ReplayOutputs {
        crate::outputs::ReplayOutputs::new(Box::new(SharedSink::default()))
    }

    fn machine() -> (Machine, SharedSink) {
        let sink = SharedSink::default();
        let memory = crate::memory::create(RAM).unwrap();
        let outputs = crate::outputs::ReplayOutputs::new(Box::new(sink.clone()));
        let set = DeviceSet::default();
        (Machine::new(memory, set, Box::<FakeInputs>::default(), Box::new(outputs)), sink)
    }

    fn at_rip(rip: u64) -> kvm_regs {
        kvm_regs { rip, ..Default::default() }
    }

    fn read(machine: &mut Machine, addr: u64) -> Action {
        machine.handle_exit(Exit::MmioRead { addr, size: 8 }, &at_rip(0x20_0000))
    }

    fn write(machine: &mut Machine, addr: u64, value: u64) -> Action {
        machine.handle_exit(Exit::MmioWrite { addr, size: 8, value }, &at_rip(0x20_0000))
    }

    fn value(action: Action) -> u64 {
        match action {
            Action::Resume { read_value: Some(value) } => value,
            other => panic!("expected a read value, got {other:?}"),
        }
    }

    #[test]
    fn landmarks_count_guest_exits_only() {
        let (mut machine, _) = machine();
        machine.handle_exit(Exit::Interrupted, &at_rip(0));
        assert_eq!(machine.landmarks(), 0);
        read(&mut machine, clock::BASE + clock::MONOTONIC_NS);
        machine.handle_exit(Exit::Interrupted, &at_rip(0));
        read(&mut machine, clock::BASE + clock::WALL_NS);
        assert_eq!(machine.landmarks(), 2);
    }

    #[test]
    fn power_off_and_fault_report() {
        let (mut machine, _) = machine();
        assert_eq!(
            write(&mut machine, power::BASE + power::SHUTDOWN, 7),
            Action::Stop(RunOutcome::PowerOff { code: 7 })
        );
        write(&mut machine, power::BASE + power::FAULT_VECTOR, 14);
        write(&mut machine, power::BASE + power::FAULT_ERROR, 2);
        write(&mut machine, power::BASE + power::FAULT_RIP, 0x20_1234);
        let stop = write(&mut machine, power::BASE + power::FAULT_REPORT, 0);
        assert_eq!(
            stop,
            Action::Stop(RunOutcome::GuestException { vector: 14, error_code: 2, rip: 0x20_1234 })
        );
        let Action::Stop(outcome) = stop else { unreachable!() };
        assert!(outcome.to_string().contains("vector 14 (#PF page fault)"));
    }

    #[test]
    fn clock_reads_come_from_the_inputs() {
        let (mut machine, _) = machine();
        let first = value(read(&mut machine, clock::BASE + clock::MONOTONIC_NS));
        let second = value(read(&mut machine, clock::BASE + clock::MONOTONIC_NS));
        assert_eq!((first, second), (1_000, 2_000));
        assert!(
            value(read(&mut machine, clock::BASE + clock::WALL_NS)) > 1_700_000_000_000_000_000
        );
    }

    #[test]
    fn timer_fires_through_wait_and_refreshes_the_event_page() {
        let (mut machine, _) = machine();
        let page = 0x10_0000;
        write(&mut machine, events::BASE + events::EVENT_PAGE, page);
        write(&mut machine, timer::BASE + timer::DEADLINE_NS, 50_000);
        assert_eq!(value(read(&mut machine, timer::BASE + timer::DEADLINE_NS)), 50_000);
        assert_eq!(value(read(&mut machine, events::BASE + events::YIELD)), 0, "not yet due");
        assert_eq!(value(read(&mut machine, events::BASE + events::WAIT)), events::TIMER);
        let stored: u64 = machine.memory.read_obj(GuestAddress(page)).unwrap();
        assert!(stored >= 50_000, "event page holds {stored}");
        assert_eq!(value(read(&mut machine, timer::BASE + timer::DEADLINE_NS)), 0, "one-shot");
        assert_eq!(value(read(&mut machine, events::BASE + events::YIELD)), 0, "read clears");
    }

    #[test]
    fn a_past_deadline_is_pending_at_the_next_landmark() {
        let (mut machine, _) = machine();
        read(&mut machine, clock::BASE + clock::MONOTONIC_NS);
        write(&mut machine, timer::BASE + timer::DEADLINE_NS, 1);
        assert_eq!(value(read(&mut machine, events::BASE + events::YIELD)), events::TIMER);
    }

    #[test]
    fn waiting_with_nothing_armed_is_reported() {
        let (mut machine, _) = machine();
        let action = read(&mut machine, events::BASE + events::WAIT);
        assert_eq!(action, Action::Stop(RunOutcome::InputsFailed(InputError::NothingToWaitFor)));
    }

    #[test]
    fn console_prints_guest_buffers_and_refuses_others() {
        let (mut machine, sink) = machine();
        machine.memory.write_slice(b"hello", GuestAddress(0x30_0000)).unwrap();
        write(
            &mut machine,
            console::BASE + console::WRITE,
            ftvm_abi::buf::pack(0x30_0000, 5).unwrap(),
        );
        assert_eq!(sink.text(), "hello");
        write(
            &mut machine,
            console::BASE + console::WRITE,
            ftvm_abi::buf::pack(RAM - 2, 5).unwrap(),
        );
        assert_eq!(sink.text().len(), 5);
        assert_eq!(machine.misbehaviour.count(Offence::BufferOutsideRam), 1);
    }

    #[test]
    fn entropy_fills_guest_memory() {
        let (mut machine, _) = machine();
        write(
            &mut machine,
            entropy::BASE + entropy::FILL,
            ftvm_abi::buf::pack(0x40_0000, 4).unwrap(),
        );
        let bytes: [u8; 4] = machine.memory.read_obj(GuestAddress(0x40_0000)).unwrap();
        assert_eq!(bytes, [1, 2, 3, 4]);
        assert_ne!(value(read(&mut machine, entropy::BASE + entropy::RANDOM_U64)), 0);
        write(&mut machine, entropy::BASE + entropy::FILL, ftvm_abi::buf::pack(RAM, 1).unwrap());
        assert_eq!(machine.misbehaviour.count(Offence::BufferOutsideRam), 1);
    }

    #[test]
    fn bad_accesses_are_counted_not_obeyed() {
        let (mut machine, _) = machine();
        assert_eq!(value(read(&mut machine, 0xc000_0000)), u64::MAX);
        let narrow = machine.handle_exit(Exit::MmioRead { addr: clock::BASE, size: 4 }, &at_rip(0));
        assert_eq!(value(narrow), u64::MAX);
        write(&mut machine, clock::BASE, 5);
        write(&mut machine, events::BASE + events::EVENT_PAGE, RAM - 4);
        machine.handle_exit(Exit::IoOut { port: 0x80, value: 1 }, &at_rip(0));
        for offence in [
            Offence::UnknownMmio,
            Offence::BadAccessSize,
            Offence::ReadOnlyRegister,
            Offence::BufferOutsideRam,
            Offence::PortIo,
        ] {
            assert_eq!(machine.misbehaviour.count(offence), 1, "{offence:?}");
        }
    }

    #[test]
    fn an_exit_past_the_end_of_the_log_is_left_for_live_inputs_to_handle() {
        let (mut machine, _) = machine();
        let mut ending = FakeInputs::default();
        ending.log_ends_before = Some(2);
        machine.switch_io(Box::new(ending), Box::new(outputs()));
        assert_eq!(value(read(&mut machine, clock::BASE + clock::MONOTONIC_NS)), 1_000);
        let exit = Exit::MmioRead { addr: clock::BASE + clock::MONOTONIC_NS, size: 8 };
        let action = machine.handle_exit(exit.clone(), &at_rip(0x20_0000));
        assert_eq!(action, Action::LogEnded { covered_landmark: 1, landmark: 2 });
        assert_eq!(machine.landmarks(), 1, "the exit is not counted until it is handled");
        machine.switch_io(Box::<FakeInputs>::default(), Box::new(outputs()));
        assert_eq!(value(machine.handle_exit(exit, &at_rip(0x20_0000))), 1_000);
        assert_eq!(machine.landmarks(), 2);
    }

    #[test]
    fn fatal_exits_stop_the_run() {
        let (mut machine, _) = machine();
        assert_eq!(
            machine.handle_exit(Exit::Shutdown, &at_rip(0x42)),
            Action::Stop(RunOutcome::TripleFault { rip: 0x42 })
        );
        let internal = machine.handle_exit(Exit::InternalError { suberror: 1 }, &at_rip(0x43));
        assert!(matches!(internal, Action::Stop(RunOutcome::KvmError { .. })));
    }

    /// One MMIO exit somewhere in or near the device windows, any size, any value.
    fn any_exit() -> impl Strategy<Value = Exit> {
        let addr = prop_oneof![
            (0u64..6, 0u64..0x1000)
                .prop_map(|(window, offset)| ftvm_abi::mmio::window(window) + offset),
            (0u64..6, 0u64..8)
                .prop_map(|(window, register)| ftvm_abi::mmio::window(window) + register * 8),
            any::<u64>(),
        ];
        let value = prop_oneof![
            any::<u64>(),
            (0u64..RAM + 64, 0usize..0x1_0000)
                .prop_map(|(addr, len)| ftvm_abi::buf::pack(addr, len).unwrap())
        ];
        (addr, 1usize..=8, value, any::<bool>()).prop_map(|(addr, size, value, is_write)| {
            if is_write {
                Exit::MmioWrite { addr, size, value }
            } else {
                Exit::MmioRead { addr, size }
            }
        })
    }

    proptest! {
        /// Random register traffic never panics the VMM; every exit is a
        /// landmark until one of them ends the run.
        #[test]
        fn random_register_traffic_is_survived(exits in proptest::collection::vec(any_exit(), 1..200)) {
            let (mut machine, _) = machine();
            for (index, exit) in exits.into_iter().enumerate() {
                let action = machine.handle_exit(exit, &at_rip(0x20_0000));
                prop_assert_eq!(machine.landmarks(), index as u64 + 1);
                if let Action::Stop(outcome) = action {
                    let expected = matches!(
                        outcome,
                        RunOutcome::PowerOff { .. } | RunOutcome::GuestException { .. } | RunOutcome::InputsFailed(InputError::NothingToWaitFor)
                    );
                    prop_assert!(expected, "unexpected outcome {:?}", outcome);
                    break;
                }
            }
        }
    }
}
