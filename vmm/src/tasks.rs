//! Work other threads hand the vCPU thread, done between two exits with the whole VM at hand
//! (the guest pauses meanwhile): a snapshot for the API socket, the last step of adding a
//! backup ([`crate::ft::transfer`]). One queue for every such request, so the vCPU loop has
//! one cheap check per exit.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::vm::Vm;

/// A piece of work for the vCPU thread; it answers through whatever channel it captured.
pub type VmTask = Box<dyn FnOnce(&mut Vm) + Send>;

/// Tasks waiting for the vCPU thread.
#[derive(Default)]
pub struct VmTasks {
    pending: AtomicBool,
    queue: Mutex<VecDeque<VmTask>>,
}

impl VmTasks {
    /// Queues `task` for the next pause between two exits.
    pub fn push(&self, task: VmTask) {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push_back(task);
        self.pending.store(true, Ordering::SeqCst);
    }

    /// The next task, if any (a cheap check when there is none).
    pub fn take(&self) -> Option<VmTask> {
        if !self.pending.load(Ordering::Relaxed) {
            return None;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let next = queue.pop_front();
        self.pending.store(!queue.is_empty(), Ordering::SeqCst);
        next
    }
}
