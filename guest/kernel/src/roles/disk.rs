//! `role=disk-selftest [mib=N]`: checks the virtio-blk disk end to end and
//! proves data persists across runs.
//!
//! Sector 0 holds a header: magic, a generation counter and how many sectors
//! that generation wrote. Every data sector's contents derive from (generation,
//! sector number). A run first verifies what the previous run (if any) left,
//! then writes generation + 1 with requests of mixed sizes, flushes, updates
//! the header, flushes, and reads everything back with differently sized
//! requests. Success prints `disk ok: generation G, generation G-1 verified`
//! (or `..., fresh image` on a zeroed disk).
use alloc::vec::Vec;

use super::{number, RoleError};
use crate::check;
use crate::cmdline::Cmdline;
use crate::drivers::clock;
use crate::drivers::virtio::block::{BlockDevice, BlockError, SECTOR_BYTES};
use crate::println;
use ftvm_abi::boot::{device, BootInfo};

const MAGIC: [u8; 8] = *b"FTVMDSK1";
/// Request sizes (sectors) cycled through while writing; 256 exceeds one
/// device request and is split by the block API.
const WRITE_CHUNK_SECTORS: [u64; 5] = [1, 8, 128, 3, 256];
/// Request sizes cycled through while reading, so boundaries differ from writes.
const READ_CHUNK_SECTORS: [u64; 4] = [5, 256, 1, 64];
const WORDS_PER_SECTOR: usize = SECTOR_BYTES / 8;

/// The sector-0 header.
struct Header {
    generation: u64,
    data_sectors: u64,
}

impl Header {
    fn encode(&self) -> [u8; SECTOR_BYTES] {
        let mut sector = [0u8; SECTOR_BYTES];
        sector[0..8].copy_from_slice(&MAGIC);
        sector[8..16].copy_from_slice(&self.generation.to_le_bytes());
        sector[16..24].copy_from_slice(&self.data_sectors.to_le_bytes());
        let checksum = ftvm_abi::fnv1a64(0, &sector[0..24]);
        sector[24..32].copy_from_slice(&checksum.to_le_bytes());
        sector
    }

    /// `Ok(None)` for an all-zero sector (a fresh image).
    fn decode(sector: &[u8]) -> Result<Option<Header>, RoleError> {
        if sector.iter().all(|byte| *byte == 0) {
            return Ok(None);
        }
        let word = |offset: usize| {
            u64::from_le_bytes(sector[offset..offset + 8].try_into().expect("8 bytes"))
        };
        check!(
            sector[0..8] == MAGIC,
            "sector 0 holds data that is not a disk-selftest header; use a fresh image"
        );
        check!(
            word(24) == ftvm_abi::fnv1a64(0, &sector[0..24]),
            "sector 0 header checksum mismatch: the header is corrupt"
        );
        Ok(Some(Header { generation: word(8), data_sectors: word(16) }))
    }
}

/// The 64-bit word `word` of `sector` as written by `generation`.
fn pattern_word(generation: u64, sector: u64, word: usize) -> u64 {
    // splitmix64 finaliser over a unique input per (generation, sector, word).
    let mut mixed = generation
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(sector.wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
        .wrapping_add(word as u64);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    mixed ^ (mixed >> 31)
}

fn fill_pattern(generation: u64, first_sector: u64, buf: &mut [u8]) {
    for (index, sector_bytes) in buf.chunks_exact_mut(SECTOR_BYTES).enumerate() {
        let sector = first_sector + index as u64;
        for (word, bytes) in sector_bytes.chunks_exact_mut(8).enumerate() {
            bytes.copy_from_slice(&pattern_word(generation, sector, word).to_le_bytes());
        }
    }
}

fn check_pattern(generation: u64, first_sector: u64, buf: &[u8]) -> Result<(), RoleError> {
    for (index, sector_bytes) in buf.chunks_exact(SECTOR_BYTES).enumerate() {
        let sector = first_sector + index as u64;
        for word in 0..WORDS_PER_SECTOR {
            let found = u64::from_le_bytes(
                sector_bytes[word * 8..word * 8 + 8].try_into().expect("8 bytes"),
            );
            let expected = pattern_word(generation, sector, word);
            check!(
                found == expected,
                "sector {sector} word {word}: expected {expected:#018x} (generation \
                 {generation}), found {found:#018x}"
            );
        }
    }
    Ok(())
}

fn block_error(what: &str, error: BlockError) -> RoleError {
    RoleError::Check(alloc::format!("{what}: {error}"))
}

/// Calls `request(first_sector, sectors)` over the data sectors of a
/// generation (1..=data_sectors, plus the last sector of the disk), in
/// requests whose sizes cycle through `chunk_sectors`; returns the bytes covered.
fn for_each_request(
    data_sectors: u64,
    capacity_sectors: u64,
    chunk_sectors: &[u64],
    mut request: impl FnMut(u64, u64) -> Result<(), RoleError>,
) -> Result<u64, RoleError> {
    let mut covered_bytes = 0u64;
    for (start, count) in [(1, data_sectors), (capacity_sectors - 1, 1)] {
        let mut sector = start;
        for chunk in chunk_sectors.iter().cycle() {
            if sector >= start + count {
                break;
            }
            let sectors = (*chunk).min(start + count - sector);
            request(sector, sectors)?;
            covered_bytes += sectors * SECTOR_BYTES as u64;
            sector += sectors;
        }
    }
    Ok(covered_bytes)
}

/// Reads the data of `generation` back and checks it; returns the bytes read.
fn verify(
    disk: &mut BlockDevice,
    generation: u64,
    data_sectors: u64,
    buf: &mut [u8],
) -> Result<u64, RoleError> {
    let capacity_sectors = disk.capacity_sectors();
    for_each_request(data_sectors, capacity_sectors, &READ_CHUNK_SECTORS, |sector, sectors| {
        let bytes = &mut buf[..sectors as usize * SECTOR_BYTES];
        disk.read(sector, bytes).map_err(|error| block_error("read", error))?;
        check_pattern(generation, sector, bytes)
    })
}

/// Bytes per second as `MB/s` with one decimal, from bytes and nanoseconds.
fn rate(bytes: u64, elapsed_ns: u64) -> alloc::string::String {
    let tenths = (bytes as u128 * 10_000) / u128::from(elapsed_ns.max(1));
    alloc::format!("{}.{} MB/s", tenths / 10, tenths % 10)
}

pub fn run(args: &Cmdline, info: &BootInfo) -> Result<(), RoleError> {
    let mib = number(args, "mib", 4)?;
    if info.devices & device::BLOCK == 0 {
        return Err(RoleError::Check("no block device: start the VM with --disk PATH".into()));
    }
    let mut disk = BlockDevice::open()
        .map_err(|error| RoleError::Check(alloc::format!("virtio-blk: {error}")))?;
    let capacity = disk.capacity_sectors();
    check!(capacity >= 3, "the disk has {capacity} sectors; disk-selftest needs at least 3");
    check!(!disk.read_only(), "the disk is read-only; disk-selftest writes");
    // Sector 0 is the header and the last sector is written separately.
    let data_sectors = (mib * 1024 * 1024 / SECTOR_BYTES as u64).clamp(1, capacity - 2);
    println!(
        "disk-selftest: {capacity} sectors ({} KiB), testing {data_sectors} sectors",
        capacity * SECTOR_BYTES as u64 / 1024
    );
    let largest_chunk = WRITE_CHUNK_SECTORS.iter().chain(&READ_CHUNK_SECTORS).max().unwrap();
    let mut buf: Vec<u8> = alloc::vec![0u8; *largest_chunk as usize * SECTOR_BYTES];

    let mut header_sector = [0u8; SECTOR_BYTES];
    disk.read(0, &mut header_sector).map_err(|error| block_error("read header", error))?;
    let previous = Header::decode(&header_sector)?;
    if let Some(previous) = &previous {
        check!(
            previous.data_sectors >= 1 && previous.data_sectors <= capacity - 2,
            "header says generation {} wrote {} sectors, which does not fit this disk",
            previous.generation,
            previous.data_sectors
        );
        verify(&mut disk, previous.generation, previous.data_sectors, &mut buf)?;
        println!(
            "disk-selftest: generation {} data verified ({} sectors)",
            previous.generation, previous.data_sectors
        );
    }

    let generation = previous.as_ref().map_or(1, |header| header.generation + 1);
    let started_ns = clock::monotonic_ns();
    let written_bytes =
        for_each_request(data_sectors, capacity, &WRITE_CHUNK_SECTORS, |sector, sectors| {
            let bytes = &mut buf[..sectors as usize * SECTOR_BYTES];
            fill_pattern(generation, sector, bytes);
            disk.write(sector, bytes).map_err(|error| block_error("write", error))
        })?;
    disk.flush().map_err(|error| block_error("flush", error))?;
    let written_ns = clock::monotonic_ns() - started_ns;
    let header = Header { generation, data_sectors };
    disk.write(0, &header.encode()).map_err(|error| block_error("write header", error))?;
    disk.flush().map_err(|error| block_error("flush header", error))?;

    let started_ns = clock::monotonic_ns();
    let read_bytes = verify(&mut disk, generation, data_sectors, &mut buf)?;
    let read_ns = clock::monotonic_ns() - started_ns;
    disk.read(0, &mut header_sector).map_err(|error| block_error("read header", error))?;
    check!(header_sector == header.encode(), "the header read back differs from the one written");
    println!(
        "disk-selftest: wrote {written_bytes} bytes in {} us ({}, flush included), read {read_bytes} bytes in {} us ({})",
        written_ns / 1000,
        rate(written_bytes, written_ns),
        read_ns / 1000,
        rate(read_bytes, read_ns)
    );
    match previous {
        Some(previous) => {
            println!(
                "disk ok: generation {generation}, generation {} verified",
                previous.generation
            )
        }
        None => println!("disk ok: generation {generation}, fresh image"),
    }
    Ok(())
}
