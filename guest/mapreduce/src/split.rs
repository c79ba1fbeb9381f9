//! Reading a map task's split: the lines that start in one chunk of a file.
//!
//! A line belongs to the split holding its first byte. The reader asks for the chunk from one
//! byte before it (a line starts at the chunk's first byte iff that byte is `\n`), drops the
//! end of a line begun in the previous chunk, then asks for pieces past the chunk's end until
//! its last line ends. A NUL byte marks the end of the file (GFS reads past the end as zeros;
//! inputs are text without NULs). Every line of the file lands in exactly one split.

use alloc::vec::Vec;

/// The state of reading one split; a sans-IO helper: it says what to read next and takes the
/// bytes read.
#[derive(Debug)]
pub struct SplitReader {
    chunk_index: u64,
    chunk_bytes: u64,
    tail_piece_bytes: u64,
    text: Vec<u8>,
    base_offset: u64,
    next_read: Option<(u64, u64)>,
}

impl SplitReader {
    /// A reader for chunk `chunk_index` of a file cut in chunks of `chunk_bytes`, reading
    /// `tail_piece_bytes` at a time past the chunk's end.
    pub fn new(chunk_index: u64, chunk_bytes: u64, tail_piece_bytes: u64) -> Self {
        let chunk_start = chunk_index * chunk_bytes;
        let read_start = chunk_start.saturating_sub(1);
        SplitReader {
            chunk_index,
            chunk_bytes,
            tail_piece_bytes,
            text: Vec::new(),
            base_offset: read_start,
            next_read: Some((read_start, chunk_start + chunk_bytes - read_start)),
        }
    }

    /// The `(file offset, length)` to read next, or `None` once the split's text is complete.
    pub fn next_read(&self) -> Option<(u64, u64)> {
        self.next_read
    }

    /// Takes the bytes of the read [`SplitReader::next_read`] asked for.
    pub fn on_data(&mut self, bytes: &[u8]) {
        let Some((offset, len)) = self.next_read.take() else { return };
        let end_of_file = bytes.iter().position(|b| *b == 0);
        let data = &bytes[..end_of_file.unwrap_or(bytes.len())];
        let chunk_start = self.chunk_index * self.chunk_bytes;
        let line_complete = if offset < chunk_start + self.chunk_bytes {
            // The chunk itself.
            if self.chunk_index == 0 {
                self.text = data.to_vec();
            } else if let Some(at) = data.iter().position(|b| *b == b'\n') {
                self.base_offset = offset + at as u64 + 1;
                self.text = data[at + 1..].to_vec();
            } else {
                self.text.clear(); // no line starts in this chunk
            }
            self.text.is_empty() || self.text.last() == Some(&b'\n')
        } else if let Some(at) = data.iter().position(|b| *b == b'\n') {
            self.text.extend_from_slice(&data[..=at]);
            true
        } else {
            self.text.extend_from_slice(data);
            false
        };
        if !line_complete && end_of_file.is_none() && data.len() as u64 == len {
            let next = if offset < chunk_start + self.chunk_bytes {
                chunk_start + self.chunk_bytes
            } else {
                offset + len
            };
            self.next_read = Some((next, self.tail_piece_bytes));
        }
    }

    /// The split's lines (complete once [`SplitReader::next_read`] is `None`).
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// File offset of the first byte of [`SplitReader::text`].
    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(file: &[u8], offset: u64, len: u64) -> Vec<u8> {
        (offset..offset + len).map(|at| file.get(at as usize).copied().unwrap_or(0)).collect()
    }

    #[test]
    fn splits_cover_every_line_exactly_once() {
        let mut file = Vec::new();
        for k in 0..200u32 {
            let words = (k * 7919) % 23;
            for w in 0..words {
                file.extend_from_slice(if w % 3 == 0 { b"ab " } else { b"cdefg " });
            }
            file.push(b'\n');
        }
        file.extend_from_slice(b"unterminated");
        for chunk_bytes in [16u64, 37, 64, 100, 512] {
            let chunks = (file.len() as u64).div_ceil(chunk_bytes);
            let mut joined = Vec::new();
            for index in 0..chunks {
                let mut reader = SplitReader::new(index, chunk_bytes, 5);
                while let Some((offset, len)) = reader.next_read() {
                    reader.on_data(&read(&file, offset, len));
                }
                if !reader.text().is_empty() {
                    assert_eq!(
                        reader.base_offset(),
                        joined.len() as u64,
                        "chunk {index} of {chunk_bytes}"
                    );
                }
                joined.extend_from_slice(reader.text());
            }
            assert_eq!(joined, file, "chunk size {chunk_bytes}");
        }
    }
}
