//! A simulated node's disk contents, allocated as they are written: a page nobody wrote reads
//! as zeros without being held in memory. Runs are short and touch little of their disks, so
//! zeroing whole disks up front (megabytes per worker) was most of a MapReduce run's time.

use std::ops::{Index, IndexMut};

/// Bytes per page held.
const PAGE_BYTES: usize = 4096;

/// What unwritten pages read as.
static ZERO_PAGE: [u8; PAGE_BYTES] = [0; PAGE_BYTES];

/// A disk image of a fixed length, all zeros until written.
pub struct DiskImage {
    len_bytes: usize,
    pages: Vec<Option<Box<[u8; PAGE_BYTES]>>>,
}

impl DiskImage {
    /// A zeroed image of `len_bytes` bytes.
    pub fn zeroed(len_bytes: usize) -> Self {
        let mut pages = Vec::new();
        pages.resize_with(len_bytes.div_ceil(PAGE_BYTES), || None);
        DiskImage { len_bytes, pages }
    }

    pub fn len(&self) -> usize {
        self.len_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len_bytes == 0
    }

    /// Zeroes the whole image (a lost disk).
    pub fn clear(&mut self) {
        self.pages.iter_mut().for_each(|page| *page = None);
    }

    /// The bytes at `at..at + len`. Panics past the end, like a slice.
    pub fn read(&self, at: usize, len: usize) -> Vec<u8> {
        assert!(at + len <= self.len_bytes, "read past the end of the disk image");
        let mut bytes = Vec::with_capacity(len);
        let mut offset = at;
        while offset < at + len {
            let (page, within) = (offset / PAGE_BYTES, offset % PAGE_BYTES);
            let take = (PAGE_BYTES - within).min(at + len - offset);
            let source = self.pages[page].as_deref().unwrap_or(&ZERO_PAGE);
            bytes.extend_from_slice(&source[within..within + take]);
            offset += take;
        }
        bytes
    }

    /// Writes `data` at `at`. Panics past the end, like a slice.
    pub fn write(&mut self, at: usize, data: &[u8]) {
        assert!(at + data.len() <= self.len_bytes, "write past the end of the disk image");
        let mut written = 0;
        while written < data.len() {
            let offset = at + written;
            let (page, within) = (offset / PAGE_BYTES, offset % PAGE_BYTES);
            let take = (PAGE_BYTES - within).min(data.len() - written);
            self.page_mut(page)[within..within + take]
                .copy_from_slice(&data[written..written + take]);
            written += take;
        }
    }

    fn page_mut(&mut self, page: usize) -> &mut [u8; PAGE_BYTES] {
        self.pages[page].get_or_insert_with(|| Box::new([0; PAGE_BYTES]))
    }
}

impl Index<usize> for DiskImage {
    type Output = u8;

    fn index(&self, at: usize) -> &u8 {
        assert!(at < self.len_bytes, "byte past the end of the disk image");
        self.pages[at / PAGE_BYTES].as_deref().map_or(&0, |page| &page[at % PAGE_BYTES])
    }
}

impl IndexMut<usize> for DiskImage {
    fn index_mut(&mut self, at: usize) -> &mut u8 {
        assert!(at < self.len_bytes, "byte past the end of the disk image");
        &mut self.page_mut(at / PAGE_BYTES)[at % PAGE_BYTES]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_was_written_across_pages_and_zeros_elsewhere() {
        let mut image = DiskImage::zeroed(3 * PAGE_BYTES + 100);
        let data: Vec<u8> = (0..PAGE_BYTES + 10).map(|i| (i % 251) as u8 + 1).collect();
        image.write(PAGE_BYTES - 5, &data);
        assert_eq!(image.read(PAGE_BYTES - 5, data.len()), data);
        assert_eq!(image.read(0, 10), vec![0; 10]);
        let end = image.len() - 100;
        assert_eq!(image.read(end, 100), vec![0; 100]);
        image[7] ^= 0x5A;
        assert_eq!(image[7], 0x5A);
        image.clear();
        assert_eq!(image.read(PAGE_BYTES - 5, data.len()), vec![0; data.len()]);
        assert_eq!(image[7], 0);
    }
}
