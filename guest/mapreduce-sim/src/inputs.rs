//! Seeded input documents: lines of words from a small vocabulary, with punctuation, empty
//! lines, a few lines longer than a tail piece, and lines crossing chunk boundaries.

use gfs::pcg::Pcg32;

const VOCABULARY: [&str; 40] = [
    "the",
    "map",
    "reduce",
    "chunk",
    "master",
    "worker",
    "lease",
    "replica",
    "append",
    "record",
    "split",
    "sort",
    "merge",
    "key",
    "value",
    "heart",
    "beat",
    "straggler",
    "backup",
    "task",
    "dean",
    "ghemawat",
    "google",
    "file",
    "system",
    "cluster",
    "disk",
    "network",
    "failure",
    "retry",
    "Alpha",
    "Beta",
    "gamma",
    "delta",
    "sea",
    "tea",
    "leaf",
    "bear",
    "pear",
    "year",
];

/// `(path, contents)` of `files` documents, each at most `max_chunks` chunks of `chunk_bytes`.
pub fn documents(
    seed: u64,
    files: u32,
    max_chunks: u32,
    chunk_bytes: u32,
) -> Vec<(String, Vec<u8>)> {
    let mut rng = Pcg32::new(seed, 0xD0C5);
    (0..files)
        .map(|k| {
            let path = format!("/in/doc-{k}.txt");
            let target = if rng.chance(1, 10) {
                0
            } else {
                rng.range_inclusive(1, u64::from(max_chunks * chunk_bytes)) as usize
            };
            let mut text = Vec::with_capacity(target + 64);
            while text.len() < target {
                let words = match rng.below(20) {
                    0 => 0,
                    1 => rng.range_inclusive(60, 120),
                    _ => rng.range_inclusive(1, 12),
                };
                for w in 0..words {
                    if w > 0 {
                        text.extend_from_slice(
                            [b" ".as_slice(), b", ", b". ", b"  "][rng.below(4) as usize],
                        );
                    }
                    text.extend_from_slice(
                        VOCABULARY[rng.below(VOCABULARY.len() as u64) as usize].as_bytes(),
                    );
                }
                text.push(b'\n');
            }
            (path, text)
        })
        .collect()
}
