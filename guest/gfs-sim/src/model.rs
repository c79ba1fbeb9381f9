//! The reference model the simulator checks reads against: which bytes each write produced,
//! when it was issued and acknowledged, and which record appends were acknowledged where.

use std::collections::{BTreeMap, BTreeSet};

/// One write a client issued.
#[derive(Clone, Debug)]
pub struct WriteRecord {
    pub id: u64,
    pub offset: u64,
    pub len: u64,
    pub issued_ms: u64,
    /// When the client was told it succeeded (`None`: failed or still running).
    pub acked_ms: Option<u64>,
}

impl WriteRecord {
    fn covers(&self, offset: u64) -> bool {
        offset >= self.offset && offset < self.offset + self.len
    }
}

/// The byte write `write_id` puts at file offset `offset`: never zero, so holes show.
pub fn byte_of(write_id: u64, offset: u64) -> u8 {
    let mut x = write_id
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(offset.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    (x as u8) | 1
}

/// The bytes of write `write_id` at `offset..offset+len`.
pub fn write_bytes(write_id: u64, offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len).map(|o| byte_of(write_id, o)).collect()
}

/// What a file should contain.
#[derive(Clone, Debug, Default)]
pub struct FileModel {
    pub created: bool,
    /// A delete was issued (reads are no longer checked).
    pub deleting: bool,
    pub writes: Vec<WriteRecord>,
}

impl FileModel {
    /// Highest offset any write reached.
    pub fn extent(&self) -> u64 {
        self.writes.iter().map(|w| w.offset + w.len).max().unwrap_or(0)
    }

    /// Checks `data`, read at `offset` by a read issued at `read_start_ms`. A write acknowledged
    /// more than `staleness_ms` before the read (the client's location-cache lifetime) must be
    /// visible unless a later write covers it; bytes of failed or concurrent writes may show.
    pub fn check_read(
        &self,
        offset: u64,
        data: &[u8],
        read_start_ms: u64,
        staleness_ms: u64,
    ) -> Result<(), String> {
        let end = offset + data.len() as u64;
        let mut cuts: BTreeSet<u64> = BTreeSet::from([offset, end]);
        for w in &self.writes {
            for cut in [w.offset, w.offset + w.len] {
                if cut > offset && cut < end {
                    cuts.insert(cut);
                }
            }
        }
        let cuts: Vec<u64> = cuts.into_iter().collect();
        for segment in cuts.windows(2) {
            let (from, to) = (segment[0], segment[1]);
            let covering: Vec<&WriteRecord> =
                self.writes.iter().filter(|w| w.covers(from)).collect();
            let must_see: Vec<&WriteRecord> = covering
                .iter()
                .copied()
                .filter(|w| w.acked_ms.is_some_and(|a| a + staleness_ms < read_start_ms))
                .collect();
            let allowed: Vec<&WriteRecord> = covering
                .iter()
                .copied()
                .filter(|w| !must_see.iter().any(|m| w.acked_ms.is_some_and(|a| a < m.issued_ms)))
                .collect();
            let zero_allowed = must_see.is_empty();
            for o in from..to {
                let got = data[(o - offset) as usize];
                let ok =
                    (zero_allowed && got == 0) || allowed.iter().any(|w| byte_of(w.id, o) == got);
                if !ok {
                    let newest = must_see.iter().max_by_key(|w| w.issued_ms).map(|w| w.id);
                    return Err(format!(
                        "byte at offset {o} is {got:#04x}: no allowed write produced it \
                         (allowed writes {:?}, zero allowed {zero_allowed}, newest must-see \
                         write {newest:?}, covering writes {:?})",
                        allowed.iter().map(|w| w.id).collect::<Vec<_>>(),
                        covering
                            .iter()
                            .map(|w| (w.id, w.issued_ms, w.acked_ms))
                            .collect::<Vec<_>>(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The model of a snapshot acknowledged at `acked_ms` of a request issued at `issued_ms`:
    /// writes acknowledged after the request began may or may not be in it.
    pub fn snapshot(&self, issued_ms: u64, acked_ms: u64) -> FileModel {
        let writes = self
            .writes
            .iter()
            .filter(|w| w.issued_ms < acked_ms)
            .map(|w| WriteRecord { acked_ms: w.acked_ms.filter(|a| *a < issued_ms), ..w.clone() })
            .collect();
        FileModel { created: true, deleting: false, writes }
    }
}

/// An acknowledged record append.
#[derive(Clone, Debug)]
pub struct AckedAppend {
    pub path: String,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Everything the clients were told.
#[derive(Default)]
pub struct Model {
    pub files: BTreeMap<String, FileModel>,
    pub appends: Vec<AckedAppend>,
    pub next_write_id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(id: u64, offset: u64, len: u64, issued_ms: u64, acked_ms: Option<u64>) -> WriteRecord {
        WriteRecord { id, offset, len, issued_ms, acked_ms }
    }

    #[test]
    fn acknowledged_write_must_show_and_older_data_is_stale() {
        let file = FileModel {
            created: true,
            deleting: false,
            writes: vec![write(1, 0, 10, 0, Some(5)), write(2, 5, 10, 10, Some(20))],
        };
        let mut fresh = write_bytes(1, 0, 5);
        fresh.extend(write_bytes(2, 5, 10));
        assert!(file.check_read(0, &fresh, 100, 10).is_ok());
        let stale = write_bytes(1, 0, 10);
        assert!(file.check_read(0, &stale, 100, 10).is_err(), "write 2 was superseded");
        assert!(file.check_read(0, &stale, 25, 10).is_ok(), "inside the cache window");
        assert!(file.check_read(0, &[0; 15], 100, 10).is_err(), "a hole where data must be");
        let garbage = vec![0xEE; 3];
        assert!(file.check_read(20, &[0; 3], 100, 10).is_ok());
        assert!(file.check_read(20, &garbage, 100, 10).is_err());
    }

    #[test]
    fn failed_writes_may_show_anywhere_in_their_range() {
        let file = FileModel {
            created: true,
            deleting: false,
            writes: vec![write(1, 0, 4, 0, Some(5)), write(2, 0, 4, 10, None)],
        };
        assert!(file.check_read(0, &write_bytes(2, 0, 4), 100, 0).is_ok());
        assert!(file.check_read(0, &write_bytes(1, 0, 4), 100, 0).is_ok());
    }
}
