//! The network event loop shared by every networked role.
//!
//! One iteration: feed every received frame to the interface (with the
//! service's per-frame hook between frames), poll it, run the role's
//! [`Service`], poll again so whatever the service queued goes out, hand all
//! queued frames to the NIC in one exit, arm the one-shot timer for the next
//! deadline (only when that deadline moves earlier), and wait on the event
//! register. The time comes from the event page the VMM refreshes on every
//! `wait`, so an idle-to-busy round trip costs no clock read.
use smoltcp::iface::{Interface, PollIngressSingleResult, SocketSet};

use super::{instant_from_ns, Network};
use crate::drivers::{clock, timer};
use crate::runtime;
use ftvm_abi::mmio::events::{BLOCK, NET, TIMER};

/// What a service wants after one poll.
pub enum Step<T> {
    /// Keep running; call again by `wake_at_ns` (monotonic) at the latest, or
    /// only when the network has news when `None`.
    Continue { wake_at_ns: Option<u64> },
    /// The service finished with this result.
    Done(T),
}

/// A role's logic, driven by the network loop.
pub trait Service {
    /// What the service returns when it finishes.
    type Output;

    /// Called once per loop iteration, after the interface processed every
    /// received frame. `now_ns` is the monotonic time of this iteration.
    fn poll(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        now_ns: u64,
    ) -> Step<Self::Output>;

    /// Called after each received frame, before the next one of the same
    /// batch is processed: the place for cheap upkeep that cannot wait for the
    /// end of the batch (e.g. replacing a listening socket a SYN just took).
    fn after_frame(&mut self, _sockets: &mut SocketSet<'static>) {}
}

fn earliest(first: Option<u64>, second: Option<u64>) -> Option<u64> {
    match (first, second) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Network {
    /// Every received frame through the stack one at a time, the service's
    /// per-frame hook after each (frames can arrive at any exit, so a plain
    /// `poll` could ingest a burst of SYNs before the hook refills the
    /// listeners), then the stack's timers and egress.
    fn pump<S: Service>(&mut self, service: &mut S, now: smoltcp::time::Instant) {
        self.iface.poll_maintenance(now);
        while !matches!(
            self.iface.poll_ingress_single(now, &mut *self.device, &mut self.sockets),
            PollIngressSingleResult::None
        ) {
            service.after_frame(&mut self.sockets);
        }
        self.iface.poll_egress(now, &mut *self.device, &mut self.sockets);
    }

    /// Runs `service` until it is done; returns its result.
    pub fn run<S: Service>(&mut self, service: &mut S) -> S::Output {
        let mut now_ns = clock::monotonic_ns();
        // The deadline the timer device holds, as far as we know.
        let mut armed_deadline_ns: Option<u64> = None;
        loop {
            if armed_deadline_ns.is_some_and(|armed| armed <= now_ns) {
                // Passed: the device fired (or fires at the next exit) and disarmed.
                armed_deadline_ns = None;
            }
            let now = instant_from_ns(now_ns);
            self.pump(service, now);
            let wake_at_ns = match service.poll(&mut self.iface, &mut self.sockets, now_ns) {
                Step::Continue { wake_at_ns } => wake_at_ns,
                Step::Done(output) => {
                    self.pump(service, now);
                    self.device.flush();
                    return output;
                }
            };
            self.pump(service, now);
            self.device.flush();

            let stack_deadline_ns = self
                .iface
                .poll_delay(now, &self.sockets)
                .map(|delay| now_ns.saturating_add(delay.total_micros().saturating_mul(1000)));
            if let Some(deadline_ns) = earliest(stack_deadline_ns, wake_at_ns) {
                if deadline_ns <= now_ns {
                    // Work is due already: take a cheap landmark instead of sleeping.
                    runtime::yield_now();
                    runtime::take(TIMER | NET | BLOCK);
                    now_ns = clock::monotonic_ns();
                    continue;
                }
                if armed_deadline_ns.is_none_or(|armed| deadline_ns < armed) {
                    timer::set_deadline_ns(deadline_ns);
                    armed_deadline_ns = Some(deadline_ns);
                }
            }
            runtime::wait();
            now_ns = runtime::time_at_last_wait_ns();
            runtime::take(TIMER | NET | BLOCK);
        }
    }
}
