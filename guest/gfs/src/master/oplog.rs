//! The master's operation log and checkpoints on its own disk.
//!
//! Disk layout (512-byte sectors): sectors 0 and 1 hold two superblocks (the valid one with the
//! highest sequence wins), then two checkpoint slots, then the log area. A log record is
//! `len: u32 | crc32c(epoch, payload): u32 | postcard payload`; every flush starts on a fresh
//! sector (zero padding between flushes), so a written sector is never rewritten and a torn
//! write can only lose records that were never acknowledged. A checkpoint starts a new log
//! epoch, so records of an older epoch left in the area are ignored.

use alloc::vec::Vec;

use super::state::{LogRecord, PersistentState};
use crate::disk::{pad_to_sector, sectors_for, DiskOp, SECTOR_BYTES};
use crate::wire::{crc32c, CRC32C};

const SUPERBLOCK_MAGIC: u32 = 0x4746_534D; // "GFSM"
const RECORD_HEADER_BYTES: usize = 8;
const CHECKPOINT_HEADER_BYTES: usize = 12;

/// Log sequence number: the position of a record in the order records were appended.
pub type Lsn = u64;

/// Which checkpoint is current and which log epoch follows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Superblock {
    pub sequence: u64,
    pub checkpoint_slot: u8,
    pub checkpoint_bytes: u64,
    pub log_epoch: u64,
}

/// Where things are on the master's disk.
#[derive(Clone, Copy, Debug)]
pub struct LogLayout {
    pub checkpoint_sectors: u64,
    pub log_start_sector: u64,
    pub log_sectors: u64,
}

impl LogLayout {
    /// The layout of a disk of `disk_sectors` with checkpoint slots of `checkpoint_sectors`.
    pub fn new(disk_sectors: u64, checkpoint_sectors: u64) -> Self {
        let log_start_sector = 2 + 2 * checkpoint_sectors;
        assert!(
            disk_sectors > log_start_sector + 8,
            "master disk too small: {disk_sectors} sectors"
        );
        LogLayout {
            checkpoint_sectors,
            log_start_sector,
            log_sectors: disk_sectors - log_start_sector,
        }
    }

    /// First sector of checkpoint slot 0 or 1.
    pub fn checkpoint_sector(&self, slot: u8) -> u64 {
        2 + u64::from(slot) * self.checkpoint_sectors
    }
}

/// Encodes a superblock as one sector.
pub fn encode_superblock(superblock: &Superblock) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SECTOR_BYTES);
    bytes.extend_from_slice(&SUPERBLOCK_MAGIC.to_le_bytes());
    bytes.extend_from_slice(&superblock.sequence.to_le_bytes());
    bytes.push(superblock.checkpoint_slot);
    bytes.extend_from_slice(&superblock.checkpoint_bytes.to_le_bytes());
    bytes.extend_from_slice(&superblock.log_epoch.to_le_bytes());
    let crc = crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    pad_to_sector(bytes)
}

/// Decodes one superblock sector; `None` if it is blank or corrupt.
pub fn decode_superblock(bytes: &[u8]) -> Option<Superblock> {
    let body = bytes.get(..29)?;
    let crc = u32::from_le_bytes(bytes.get(29..33)?.try_into().ok()?);
    if crc32c(body) != crc || body[0..4] != SUPERBLOCK_MAGIC.to_le_bytes() {
        return None;
    }
    let long = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    Some(Superblock {
        sequence: long(4),
        checkpoint_slot: body[12],
        checkpoint_bytes: long(13),
        log_epoch: long(21),
    })
}

/// The current superblock from the two on disk (`None`: a fresh disk).
pub fn pick_superblock(two_sectors: &[u8]) -> Option<Superblock> {
    let first = decode_superblock(two_sectors.get(..SECTOR_BYTES)?);
    let second = decode_superblock(two_sectors.get(SECTOR_BYTES..2 * SECTOR_BYTES)?);
    match (first, second) {
        (Some(a), Some(b)) => Some(if a.sequence >= b.sequence { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Encodes one log record of `epoch`.
pub fn encode_record(epoch: u64, record: &LogRecord) -> Vec<u8> {
    let payload = postcard::to_allocvec(record).expect("log records always serialize");
    let mut digest = CRC32C.digest();
    digest.update(&epoch.to_le_bytes());
    digest.update(&payload);
    let mut bytes = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&digest.finalize().to_le_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

/// The records of `epoch` at the start of a log area, up to the first blank or invalid one,
/// and the bytes (whole sectors) they occupy, to continue appending after recovery.
pub fn parse_log(area: &[u8], epoch: u64) -> (Vec<LogRecord>, u64) {
    let mut records = Vec::new();
    let mut at = 0usize;
    let mut end = 0usize;
    while at + RECORD_HEADER_BYTES <= area.len() {
        let len = u32::from_le_bytes(area[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            // Padding to the end of a flush, or (at a sector start) the end of the log.
            if at & (SECTOR_BYTES - 1) == 0 {
                break;
            }
            at = at.next_multiple_of(SECTOR_BYTES);
            continue;
        }
        let crc = u32::from_le_bytes(area[at + 4..at + 8].try_into().expect("4 bytes"));
        let Some(payload) = area.get(at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len)
        else {
            break;
        };
        let mut digest = CRC32C.digest();
        digest.update(&epoch.to_le_bytes());
        digest.update(payload);
        if digest.finalize() != crc {
            break;
        }
        let Ok(record) = postcard::from_bytes(payload) else {
            break;
        };
        records.push(record);
        at += RECORD_HEADER_BYTES + len;
        end = at;
    }
    (records, end.next_multiple_of(SECTOR_BYTES) as u64)
}

/// Encodes a checkpoint (header with length and CRC, then the state), padded to sectors.
pub fn encode_checkpoint(state: &PersistentState) -> Vec<u8> {
    let payload = postcard::to_allocvec(state).expect("state always serializes");
    let mut bytes = Vec::with_capacity(CHECKPOINT_HEADER_BYTES + payload.len());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32c(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    pad_to_sector(bytes)
}

/// Decodes a checkpoint; `None` if corrupt.
pub fn decode_checkpoint(bytes: &[u8]) -> Option<PersistentState> {
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
    let payload = bytes.get(CHECKPOINT_HEADER_BYTES..CHECKPOINT_HEADER_BYTES + len)?;
    if crc32c(payload) != crc {
        return None;
    }
    postcard::from_bytes(payload).ok()
}

/// The write the log has in flight (one at a time, so writes land in order).
#[derive(Clone, Debug)]
enum LogWrite {
    Records { last_lsn: Lsn, sectors: u64 },
    Checkpoint { covered_lsn: Lsn, superblock: Superblock },
    Superblock { covered_lsn: Lsn, superblock: Superblock },
}

/// Appends records, groups them into flushes, checkpoints when the log grows: all as disk
/// requests the master issues and completions it passes back.
pub struct OpLog {
    layout: LogLayout,
    checkpoint_after_bytes: u64,
    superblock: Superblock,
    /// The epoch new records are encoded with (one ahead during a checkpoint).
    writing_epoch: u64,
    next_sector: u64,
    pending: Vec<u8>,
    pending_last_lsn: Lsn,
    appended_lsn: Lsn,
    durable_lsn: Lsn,
    in_flight: Option<(LogWrite, DiskOp)>,
}

impl OpLog {
    /// A log continuing after recovery: `superblock` is current and `log_sectors_used` of its
    /// area hold records.
    pub fn new(
        layout: LogLayout,
        checkpoint_after_bytes: u64,
        superblock: Superblock,
        log_bytes_used: u64,
    ) -> Self {
        OpLog {
            layout,
            checkpoint_after_bytes,
            superblock,
            writing_epoch: superblock.log_epoch,
            next_sector: sectors_for(log_bytes_used as usize),
            pending: Vec::new(),
            pending_last_lsn: 0,
            appended_lsn: 0,
            durable_lsn: 0,
            in_flight: None,
        }
    }

    /// Queues `record`; it is durable once [`OpLog::durable_lsn`] reaches the returned LSN.
    pub fn append(&mut self, record: &LogRecord) -> Lsn {
        self.appended_lsn += 1;
        self.pending.extend_from_slice(&encode_record(self.writing_epoch, record));
        self.pending_last_lsn = self.appended_lsn;
        self.appended_lsn
    }

    /// Every record up to this LSN is on disk (in the log or a checkpoint).
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// The last LSN handed out.
    pub fn appended_lsn(&self) -> Lsn {
        self.appended_lsn
    }

    /// The next disk write to issue, if none is in flight and there is work. `state` is the
    /// master's state including every appended record (used only when a checkpoint starts).
    pub fn next_write(&mut self, state: &PersistentState) -> Option<DiskOp> {
        if self.in_flight.is_some() || self.pending.is_empty() {
            return None;
        }
        let flush_sectors = sectors_for(self.pending.len());
        let used_bytes = self.next_sector * SECTOR_BYTES as u64;
        let full = self.next_sector + flush_sectors > self.layout.log_sectors;
        let (write, op) = if full || used_bytes >= self.checkpoint_after_bytes {
            self.start_checkpoint(state)
        } else {
            let data = pad_to_sector(core::mem::take(&mut self.pending));
            let sector = self.layout.log_start_sector + self.next_sector;
            let write =
                LogWrite::Records { last_lsn: self.pending_last_lsn, sectors: flush_sectors };
            (write, DiskOp::Write { sector, data })
        };
        self.in_flight = Some((write, op.clone()));
        Some(op)
    }

    /// Snapshots `state` (which already contains every pending record) into the other slot.
    fn start_checkpoint(&mut self, state: &PersistentState) -> (LogWrite, DiskOp) {
        let data = encode_checkpoint(state);
        assert!(
            sectors_for(data.len()) <= self.layout.checkpoint_sectors,
            "checkpoint of {} bytes does not fit its slot: raise master_checkpoint_sectors",
            data.len()
        );
        let superblock = Superblock {
            sequence: self.superblock.sequence + 1,
            checkpoint_slot: 1 - self.superblock.checkpoint_slot,
            checkpoint_bytes: data.len() as u64,
            log_epoch: self.superblock.log_epoch + 1,
        };
        // Records appended from now on belong to the new log.
        self.pending.clear();
        self.writing_epoch = superblock.log_epoch;
        let write = LogWrite::Checkpoint { covered_lsn: self.appended_lsn, superblock };
        let sector = self.layout.checkpoint_sector(superblock.checkpoint_slot);
        (write, DiskOp::Write { sector, data })
    }

    /// Handles the completion of the write in flight; returns the disk write to retry or to
    /// issue next (the superblock after a checkpoint), if any.
    pub fn on_write_done(&mut self, ok: bool) -> Option<DiskOp> {
        let (write, op) = self.in_flight.take()?;
        if !ok {
            self.in_flight = Some((write, op.clone()));
            return Some(op);
        }
        match write {
            LogWrite::Records { last_lsn, sectors } => {
                self.next_sector += sectors;
                self.durable_lsn = self.durable_lsn.max(last_lsn);
                None
            }
            LogWrite::Checkpoint { covered_lsn, superblock } => {
                let data = encode_superblock(&superblock);
                let op = DiskOp::Write { sector: superblock.sequence % 2, data };
                let write = LogWrite::Superblock { covered_lsn, superblock };
                self.in_flight = Some((write, op.clone()));
                Some(op)
            }
            LogWrite::Superblock { covered_lsn, superblock } => {
                self.superblock = superblock;
                self.next_sector = 0;
                self.durable_lsn = self.durable_lsn.max(covered_lsn);
                None
            }
        }
    }

    /// Sectors of the log area in use (for tests and metrics).
    pub fn log_sectors_used(&self) -> u64 {
        self.next_sector
    }

    /// The superblock in force.
    #[cfg(test)]
    pub fn superblock(&self) -> Superblock {
        self.superblock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn blank_sectors(count: u64) -> Vec<u8> {
        vec![0; count as usize * SECTOR_BYTES]
    }

    fn create(name: &str) -> LogRecord {
        LogRecord::CreateFile { path: name.to_string() }
    }

    /// A disk image the tests write to directly.
    fn apply(disk: &mut [u8], op: &DiskOp) {
        let DiskOp::Write { sector, data } = op else { panic!("the log only writes") };
        let at = *sector as usize * SECTOR_BYTES;
        disk[at..at + data.len()].copy_from_slice(data);
    }

    #[test]
    fn records_of_two_flushes_parse_back_and_other_epochs_are_ignored() {
        let layout = LogLayout::new(200, 10);
        let mut disk = blank_sectors(200);
        let mut log = OpLog::new(layout, 1 << 20, Superblock::default(), 0);
        let state = PersistentState::default();
        log.append(&create("/a"));
        let op = log.next_write(&state).unwrap();
        apply(&mut disk, &op);
        assert_eq!(log.on_write_done(true), None);
        assert_eq!(log.durable_lsn(), 1);
        log.append(&create("/b"));
        log.append(&create("/c"));
        assert!(log.next_write(&state).is_some());
        assert!(log.next_write(&state).is_none(), "one write at a time");
        let op = log.in_flight.as_ref().unwrap().1.clone();
        apply(&mut disk, &op);
        log.on_write_done(true);
        assert_eq!(log.durable_lsn(), 3);
        let area = &disk[layout.log_start_sector as usize * SECTOR_BYTES..];
        let (records, used) = parse_log(area, 0);
        assert_eq!(records, [create("/a"), create("/b"), create("/c")]);
        assert_eq!(used, 2 * SECTOR_BYTES as u64);
        assert!(parse_log(area, 1).0.is_empty());
    }

    #[test]
    fn checkpoint_switches_superblock_and_starts_a_new_epoch() {
        let layout = LogLayout::new(200, 10);
        let mut disk = blank_sectors(200);
        let mut log = OpLog::new(layout, SECTOR_BYTES as u64, Superblock::default(), 0);
        let mut state = PersistentState::default();
        for name in ["/a", "/b"] {
            state.apply(&create(name)).unwrap();
            log.append(&create(name));
            let op = log.next_write(&state).unwrap();
            apply(&mut disk, &op);
            let follow_up = log.on_write_done(true);
            if let Some(op) = follow_up {
                apply(&mut disk, &op);
                assert_eq!(log.on_write_done(true), None);
            }
        }
        // The second append found the log past its threshold: it went into a checkpoint.
        assert_eq!(log.superblock().sequence, 1);
        assert_eq!(log.durable_lsn(), 2);
        let superblock = pick_superblock(&disk[..2 * SECTOR_BYTES]).unwrap();
        assert_eq!(superblock, log.superblock());
        let at = layout.checkpoint_sector(superblock.checkpoint_slot) as usize * SECTOR_BYTES;
        let recovered = decode_checkpoint(&disk[at..]).unwrap();
        assert_eq!(recovered, state);
        let area = &disk[layout.log_start_sector as usize * SECTOR_BYTES..];
        assert!(parse_log(area, superblock.log_epoch).0.is_empty());
    }

    #[test]
    fn failed_write_is_retried_and_corrupt_superblock_loses_to_the_other() {
        let layout = LogLayout::new(200, 10);
        let mut log = OpLog::new(layout, 1 << 20, Superblock::default(), 0);
        log.append(&create("/a"));
        let op = log.next_write(&PersistentState::default()).unwrap();
        assert_eq!(log.on_write_done(false), Some(op));
        assert_eq!(log.durable_lsn(), 0);
        let old = Superblock { sequence: 4, ..Superblock::default() };
        let new = Superblock { sequence: 5, log_epoch: 3, ..Superblock::default() };
        let mut two = encode_superblock(&old);
        two.extend(encode_superblock(&new));
        assert_eq!(pick_superblock(&two), Some(new));
        two[SECTOR_BYTES + 6] ^= 0xFF;
        assert_eq!(pick_superblock(&two), Some(old));
        assert_eq!(pick_superblock(&blank_sectors(2)), None);
    }
}
