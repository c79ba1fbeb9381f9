//! Intermediate data: the pairs a map emits, their partitioning, sorting and combining, the
//! on-disk run format, the reducer's k-way merge, and a sequential reference run.
//!
//! A run (one partition of one map task) is a sequence of records sorted by key then value:
//! `key_len: u32 LE | value_len: u32 LE | key | value`.

use alloc::collections::{BTreeMap, BinaryHeap};
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;

use crate::app::App;

/// Why a run does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// A record's header or body runs past the end of the run.
    Truncated { at_byte: usize },
}

/// Pairs emitted by a map, stored in one arena (one allocation per buffer, not per pair).
#[derive(Default)]
pub struct PairBuffer {
    bytes: Vec<u8>,
    /// (start of key in `bytes`, key length, value length); the value follows the key.
    entries: Vec<(u32, u32, u32)>,
}

impl PairBuffer {
    /// Adds one pair.
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        self.entries.push((start, key.len() as u32, value.len() as u32));
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no pair was emitted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn pair(&self, entry: (u32, u32, u32)) -> (&[u8], &[u8]) {
        let (start, key_len, value_len) = (entry.0 as usize, entry.1 as usize, entry.2 as usize);
        (
            &self.bytes[start..start + key_len],
            &self.bytes[start + key_len..start + key_len + value_len],
        )
    }
}

fn push_record(run: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    run.extend_from_slice(&(key.len() as u32).to_le_bytes());
    run.extend_from_slice(&(value.len() as u32).to_le_bytes());
    run.extend_from_slice(key);
    run.extend_from_slice(value);
}

/// One record: a key and a value.
pub type Record<'a> = (&'a [u8], &'a [u8]);

/// Decodes a run into its records, in order.
pub fn decode_run(run: &[u8]) -> Result<Vec<Record<'_>>, RecordError> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < run.len() {
        let header = run.get(at..at + 8).ok_or(RecordError::Truncated { at_byte: at })?;
        let key_len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let value_len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let key_end = at + 8 + key_len;
        let end = key_end + value_len;
        if end > run.len() {
            return Err(RecordError::Truncated { at_byte: at });
        }
        records.push((&run[at + 8..key_end], &run[key_end..end]));
        at = end;
    }
    Ok(records)
}

/// Runs the map over `text` and returns the `reduce_tasks` partitions as encoded runs: pairs
/// partitioned by the app's partitioner, sorted by key then value, combined per key if the app
/// has a combiner.
pub fn map_to_runs(
    app: &dyn App,
    document: &str,
    base_offset: u64,
    text: &[u8],
    reduce_tasks: u32,
) -> Vec<Vec<u8>> {
    let mut pairs = PairBuffer::default();
    app.map(document, base_offset, text, &mut |key, value| pairs.push(key, value));
    runs_from_pairs(app, &pairs, reduce_tasks)
}

/// Partitions, sorts and combines `pairs` into encoded runs.
pub fn runs_from_pairs(app: &dyn App, pairs: &PairBuffer, reduce_tasks: u32) -> Vec<Vec<u8>> {
    let mut partitions: Vec<Vec<(u32, u32, u32)>> = vec![Vec::new(); reduce_tasks as usize];
    for entry in &pairs.entries {
        let (key, _) = pairs.pair(*entry);
        partitions[app.partition(key, reduce_tasks) as usize].push(*entry);
    }
    let mut runs = Vec::with_capacity(partitions.len());
    let mut values: Vec<&[u8]> = Vec::new();
    for mut entries in partitions {
        entries.sort_unstable_by(|a, b| pairs.pair(*a).cmp(&pairs.pair(*b)));
        let mut run = Vec::new();
        let mut k = 0;
        while k < entries.len() {
            let (key, _) = pairs.pair(entries[k]);
            let mut end = k;
            values.clear();
            while end < entries.len() && pairs.pair(entries[end]).0 == key {
                values.push(pairs.pair(entries[end]).1);
                end += 1;
            }
            match app.combine(key, &values) {
                Some(combined) => push_record(&mut run, key, &combined),
                None => values.iter().for_each(|value| push_record(&mut run, key, value)),
            }
            k = end;
        }
        runs.push(run);
    }
    runs
}

/// Merges sorted runs (one per map task) with a k-way heap merge, groups equal keys and
/// applies the app's reduce: the output file of one partition.
pub fn reduce_runs(app: &dyn App, runs: &[&[u8]]) -> Result<Vec<u8>, RecordError> {
    let decoded: Vec<Vec<Record>> =
        runs.iter().map(|run| decode_run(run)).collect::<Result<_, _>>()?;
    // (next record, run, index in run), smallest record first.
    let mut heap: BinaryHeap<Reverse<(Record, usize, usize)>> = decoded
        .iter()
        .enumerate()
        .filter(|(_, records)| !records.is_empty())
        .map(|(run, records)| Reverse((records[0], run, 0)))
        .collect();
    let mut output = Vec::new();
    let mut current_key: Option<&[u8]> = None;
    let mut values: Vec<&[u8]> = Vec::new();
    while let Some(Reverse(((key, value), run, index))) = heap.pop() {
        if let Some(next) = decoded[run].get(index + 1) {
            heap.push(Reverse((*next, run, index + 1)));
        }
        if current_key != Some(key) {
            if let Some(done) = current_key {
                app.reduce(done, &values, &mut output);
            }
            current_key = Some(key);
            values.clear();
        }
        values.push(value);
    }
    if let Some(done) = current_key {
        app.reduce(done, &values, &mut output);
    }
    Ok(output)
}

/// The reference: every document mapped whole, all pairs grouped in one sorted map, no
/// combiner, reduced into `reduce_tasks` outputs by the app's partitioner.
pub fn run_sequential(
    app: &dyn App,
    documents: &[(&str, &[u8])],
    reduce_tasks: u32,
) -> Vec<Vec<u8>> {
    let mut grouped: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for (name, text) in documents {
        app.map(name, 0, text, &mut |key, value| {
            grouped.entry(key.to_vec()).or_default().push(value.to_vec())
        });
    }
    let mut outputs = vec![Vec::new(); reduce_tasks as usize];
    for (key, mut values) in grouped {
        values.sort();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let partition = app.partition(&key, reduce_tasks) as usize;
        app.reduce(&key, &refs, &mut outputs[partition]);
    }
    outputs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{InvertedIndex, WordCount};

    #[test]
    fn runs_decode_and_reject_truncation() {
        let mut run = Vec::new();
        push_record(&mut run, b"k", b"vv");
        push_record(&mut run, b"", b"");
        assert_eq!(decode_run(&run), Ok(vec![(&b"k"[..], &b"vv"[..]), (&b""[..], &b""[..])]));
        assert_eq!(decode_run(&run[..run.len() - 9]), Err(RecordError::Truncated { at_byte: 0 }));
    }

    #[test]
    fn split_map_merge_reduce_equals_sequential() {
        let first: &[u8] = b"the cat\nthe dog\n";
        let second: &[u8] = b"a cat and the end\n";
        for app in [&WordCount as &dyn App, &InvertedIndex] {
            let reference = run_sequential(app, &[("one", first), ("two", second)], 3);
            let runs_one = map_to_runs(app, "one", 0, first, 3);
            let runs_two = map_to_runs(app, "two", 0, second, 3);
            for partition in 0..3 {
                let runs = [runs_one[partition].as_slice(), runs_two[partition].as_slice()];
                assert_eq!(reduce_runs(app, &runs).unwrap(), reference[partition]);
            }
        }
    }
}
