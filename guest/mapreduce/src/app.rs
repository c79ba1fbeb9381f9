//! Applications behind one small trait: word count, inverted index, distributed grep, sort.

use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use crate::wire::AppKind;

/// A MapReduce application. Map and reduce must be deterministic functions of their inputs
/// (re-executed and backup attempts must produce the same bytes).
pub trait App {
    /// Calls `emit(key, value)` for every pair in `text`: whole lines of `document` starting at
    /// byte `base_offset` of the document.
    fn map(
        &self,
        document: &str,
        base_offset: u64,
        text: &[u8],
        emit: &mut dyn FnMut(&[u8], &[u8]),
    );

    /// Folds the values one map task produced for `key` into one value, if the application can
    /// (a combiner). `None` keeps them all.
    fn combine(&self, _key: &[u8], _values: &[&[u8]]) -> Option<Vec<u8>> {
        None
    }

    /// Appends the output lines for `key` (its values arrive sorted) to `output`.
    fn reduce(&self, key: &[u8], values: &[&[u8]], output: &mut Vec<u8>);

    /// Which of `reduce_tasks` partitions `key` belongs to.
    fn partition(&self, key: &[u8], reduce_tasks: u32) -> u32 {
        (fnv1a_64(key) % u64::from(reduce_tasks)) as u32
    }
}

/// The application for `kind`.
pub fn app_for(kind: &AppKind) -> Box<dyn App> {
    match kind {
        AppKind::WordCount => Box::new(WordCount),
        AppKind::InvertedIndex => Box::new(InvertedIndex),
        AppKind::Grep { pattern } => Box::new(Grep { pattern: pattern.as_bytes().to_vec() }),
        AppKind::Sort => Box::new(Sort),
    }
}

/// FNV-1a, 64 bits: the default partitioner's hash.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Words: maximal runs of ASCII letters (case kept).
pub fn words(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|byte| !byte.is_ascii_alphabetic()).filter(|word| !word.is_empty())
}

/// Lines with their byte offsets in `text` (without the `\n`; a final unterminated line too).
pub fn lines(text: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut start = 0;
    core::iter::from_fn(move || {
        if start >= text.len() {
            return None;
        }
        let end =
            text[start..].iter().position(|b| *b == b'\n').map_or(text.len(), |at| start + at);
        let line = (start, &text[start..end]);
        start = end + 1;
        Some(line)
    })
}

fn parse_count(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |sum, digit| sum * 10 + u64::from(digit.wrapping_sub(b'0')))
}

fn push_decimal(output: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    output.extend_from_slice(&digits[at..]);
}

/// `word count` per word.
pub struct WordCount;

impl App for WordCount {
    fn map(&self, _document: &str, _base: u64, text: &[u8], emit: &mut dyn FnMut(&[u8], &[u8])) {
        for word in words(text) {
            emit(word, b"1");
        }
    }

    fn combine(&self, _key: &[u8], values: &[&[u8]]) -> Option<Vec<u8>> {
        let mut sum = Vec::new();
        push_decimal(&mut sum, values.iter().map(|v| parse_count(v)).sum());
        Some(sum)
    }

    fn reduce(&self, key: &[u8], values: &[&[u8]], output: &mut Vec<u8>) {
        output.extend_from_slice(key);
        output.push(b' ');
        push_decimal(output, values.iter().map(|v| parse_count(v)).sum());
        output.push(b'\n');
    }
}

/// `word n doc1,doc2,...` per word: the documents it occurs in.
pub struct InvertedIndex;

impl App for InvertedIndex {
    fn map(&self, document: &str, _base: u64, text: &[u8], emit: &mut dyn FnMut(&[u8], &[u8])) {
        for word in words(text) {
            emit(word, document.as_bytes());
        }
    }

    fn combine(&self, _key: &[u8], values: &[&[u8]]) -> Option<Vec<u8>> {
        // One map task reads one document: all values are the same name.
        let unique: BTreeSet<&[u8]> = values.iter().copied().collect();
        (unique.len() == 1).then(|| values[0].to_vec())
    }

    fn reduce(&self, key: &[u8], values: &[&[u8]], output: &mut Vec<u8>) {
        let documents: BTreeSet<&[u8]> = values.iter().copied().collect();
        output.extend_from_slice(key);
        output.push(b' ');
        push_decimal(output, documents.len() as u64);
        output.push(b' ');
        for (k, document) in documents.iter().enumerate() {
            if k > 0 {
                output.push(b',');
            }
            output.extend_from_slice(document);
        }
        output.push(b'\n');
    }
}

/// Lines containing a pattern, as `document:offset line` (offset zero-padded so keys sort by
/// position).
pub struct Grep {
    pub pattern: Vec<u8>,
}

impl Grep {
    fn matches(&self, line: &[u8]) -> bool {
        self.pattern.is_empty() || line.windows(self.pattern.len()).any(|w| w == self.pattern)
    }
}

impl App for Grep {
    fn map(&self, document: &str, base: u64, text: &[u8], emit: &mut dyn FnMut(&[u8], &[u8])) {
        let mut key = String::new();
        for (offset, line) in lines(text) {
            if self.matches(line) {
                key.clear();
                let _ = write!(key, "{document}:{:012}", base + offset as u64);
                emit(key.as_bytes(), line);
            }
        }
    }

    fn reduce(&self, key: &[u8], values: &[&[u8]], output: &mut Vec<u8>) {
        for line in values {
            output.extend_from_slice(key);
            output.push(b' ');
            output.extend_from_slice(line);
            output.push(b'\n');
        }
    }
}

/// Every line, in byte order; range-partitioned by the first byte so the parts in order are
/// sorted.
pub struct Sort;

impl App for Sort {
    fn map(&self, _document: &str, _base: u64, text: &[u8], emit: &mut dyn FnMut(&[u8], &[u8])) {
        for (_, line) in lines(text) {
            emit(line, b"");
        }
    }

    fn reduce(&self, key: &[u8], values: &[&[u8]], output: &mut Vec<u8>) {
        for _ in values {
            output.extend_from_slice(key);
            output.push(b'\n');
        }
    }

    fn partition(&self, key: &[u8], reduce_tasks: u32) -> u32 {
        // Ranges of the first byte over printable ASCII (control bytes first, the rest last).
        let first = u32::from(key.first().copied().unwrap_or(0));
        let printable = first.clamp(0x20, 0x7f) - 0x20;
        printable * reduce_tasks / 0x60
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn pairs(app: &dyn App, doc: &str, base: u64, text: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        app.map(doc, base, text, &mut |k, v| out.push((k.to_vec(), v.to_vec())));
        out
    }

    #[test]
    fn word_count_maps_combines_and_reduces() {
        let emitted = pairs(&WordCount, "d", 0, b"a b, a\nc");
        assert_eq!(emitted.len(), 4);
        assert_eq!(WordCount.combine(b"a", &[b"1", b"12"]), Some(b"13".to_vec()));
        let mut out = Vec::new();
        WordCount.reduce(b"a", &[b"2", b"1"], &mut out);
        assert_eq!(out, b"a 3\n");
    }

    #[test]
    fn grep_keys_lines_by_document_offset() {
        let emitted = pairs(&Grep { pattern: b"x".to_vec() }, "f", 100, b"ax\nb\nx");
        assert_eq!(
            emitted,
            vec![
                (b"f:000000000100".to_vec(), b"ax".to_vec()),
                (b"f:000000000105".to_vec(), b"x".to_vec())
            ]
        );
    }

    #[test]
    fn inverted_index_lists_unique_documents() {
        let mut out = Vec::new();
        InvertedIndex.reduce(b"w", &[b"b", b"a", b"b"], &mut out);
        assert_eq!(out, b"w 2 a,b\n");
    }

    #[test]
    fn sort_partitions_by_range() {
        assert_eq!(Sort.partition(b"\x00", 4), 0);
        assert_eq!(Sort.partition(b"\xff", 4), 3);
        assert!(Sort.partition(b"a", 4) <= Sort.partition(b"z", 4));
    }
}
