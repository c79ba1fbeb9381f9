//! Snapshots of a running guest (Firecracker's pattern: one `persist` per device): the vCPU's
//! registers, every device's state ([`Persist`], implemented next to each device), the
//! pending events, the landmark count, the guest's clock and its RAM (the pages that are
//! not all zeros), in one versioned postcard file. `ftvm remote --api-socket PATH snapshot
//! FILE` takes one of a running `ftvm run` between two exits (the guest pauses while it is
//! written); `ftvm restore --snapshot FILE` runs the guest on from there, its clock going on
//! from where it stood.
//!
//! What a snapshot leaves out: x87/SSE state (the guest's target is soft-float: its code never
//! touches those registers), the host's side of the devices (a TAP's queued frames, the
//! disk image's contents: the image is named again at restore and must be the same one),
//! and the console's running hash restarts from its value at the snapshot (the restored run
//! reports a chain of the two, not the hash of one uninterrupted run).
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_regs, kvm_sregs};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::devices::{DeviceSet, DevicesState, EventState};

/// The first bytes of a snapshot file.
pub const MAGIC: [u8; 8] = *b"FTVMSNAP";
/// The version of the snapshot format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Guest RAM is saved in pages of this size.
pub const PAGE_BYTES: usize = 4096;

/// Why a snapshot could not be taken, written, read or restored.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// The file could not be written or read.
    #[error("snapshot file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not a snapshot this build can read.
    #[error("{path} is not an ftvm snapshot of format {FORMAT_VERSION}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A saved state cannot be restored (it contradicts itself or the VM).
    #[error("the snapshot cannot be restored: {0}")]
    State(String),
    /// KVM refused a saved register state.
    #[error("KVM refused the saved {what}: {error}")]
    Kvm {
        /// Which state.
        what: &'static str,
        /// Why.
        error: kvm_ioctls::Error,
    },
}

/// A device whose state can be saved and restored.
pub trait Persist: Sized {
    /// Its saved state.
    type State: Serialize + DeserializeOwned;
    /// The state now.
    fn save(&self) -> Self::State;
    /// The device in `state`; refuses a state that contradicts itself.
    fn restore(state: Self::State) -> Result<Self, SnapshotError>;
}

/// A device whose state is the device itself: saved and restored as it is.
pub trait SavedAsIs: Clone + Serialize + DeserializeOwned {}

impl<T: SavedAsIs> Persist for T {
    type State = T;

    fn save(&self) -> T {
        self.clone()
    }

    fn restore(state: T) -> Result<T, SnapshotError> {
        Ok(state)
    }
}

/// Everything a guest needs to run on from where it was.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// The guest's command line (for reports).
    pub cmdline: String,
    /// Its NIC and disk.
    pub devices: DeviceSet,
    /// Landmarks (guest-caused exits) so far.
    pub landmarks: u64,
    /// The guest's monotonic clock at the snapshot.
    pub monotonic_ns: u64,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// Every device's state.
    pub device_state: DevicesState,
    /// Pending events and the armed timer.
    pub events: EventState,
    /// Guest RAM: (page index, bytes) of every page that is not all zeros.
    pub pages: Vec<(u64, serde_bytes::ByteBuf)>,
}

impl Snapshot {
    /// Writes the snapshot to `path` (replacing it), through a temporary file renamed at the
    /// end so a crash never leaves half a snapshot under the name.
    pub fn write(&self, path: &Path) -> Result<(), SnapshotError> {
        let io = |error| SnapshotError::Io { path: path.into(), error };
        let body = postcard::to_allocvec(self).map_err(|error| SnapshotError::Format {
            path: path.into(),
            detail: error.to_string(),
        })?;
        let partial = path.with_extension("partial");
        // Mode 0600: the file holds the guest's memory, secrets included.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(io)?;
        file.write_all(&MAGIC).map_err(io)?;
        file.write_all(&FORMAT_VERSION.to_le_bytes()).map_err(io)?;
        file.write_all(&body).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&partial, path).map_err(io)
    }

    /// Reads the snapshot at `path`.
    pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
        let bytes =
            std::fs::read(path).map_err(|error| SnapshotError::Io { path: path.into(), error })?;
        let format = |detail: String| SnapshotError::Format { path: path.into(), detail };
        if bytes.len() < 12 || bytes[..8] != MAGIC {
            return Err(format("it does not begin with the snapshot magic bytes".into()));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(format(format!("it is of format {version}")));
        }
        postcard::from_bytes(&bytes[12..]).map_err(|error| format(error.to_string()))
    }
}
