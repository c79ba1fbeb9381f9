//! The virtio devices driven through the exit handler by a made-up driver:
//! the feature handshake, block reads, writes and range errors, network
//! transmit and receive, and random descriptor tables and register writes
//! (a hostile guest) that must never hurt the VMM.
use std::sync::{Arc, Mutex};

use ftvm_abi::mmio::{events, virtio::BLOCK_BASE, virtio::NET_BASE};
use kvm_bindings::kvm_regs;
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::virtio::net::{feature, plain_packet, NetHeader};
use crate::devices::DeviceSet;
use crate::inputs::fake::{FakeInputs, DISK_FILL};
use crate::machine::{Action, Machine};
use crate::misbehaviour::Offence;
use crate::outputs::{OutputError, Outputs};
use crate::vcpu::Exit;

const RAM: u64 = 16 << 20;
const DISK_BYTES: u64 = 1 << 20;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 9];
const QUEUE_SIZE: u16 = 16;

/// Everything the devices handed to the outputs.
#[derive(Default)]
struct Recorded {
    frames: Vec<Vec<u8>>,
    writes: Vec<(u64, Vec<u8>)>,
    flushes: u32,
}

#[derive(Clone, Default)]
struct RecordingOutputs(Arc<Mutex<Recorded>>);

impl Outputs for RecordingOutputs {
    fn console(&mut self, _bytes: &[u8]) {}
    fn transmit(&mut self, frame: &[u8]) {
        self.0.lock().unwrap().frames.push(frame.to_vec());
    }
    fn disk_write(&mut self, offset: u64, data: &[u8]) -> Result<(), OutputError> {
        self.0.lock().unwrap().writes.push((offset, data.to_vec()));
        Ok(())
    }
    fn disk_flush(&mut self) -> Result<(), OutputError> {
        self.0.lock().unwrap().flushes += 1;
        Ok(())
    }
}

/// Where one queue's structures live in guest RAM.
#[derive(Clone, Copy)]
struct Rings {
    desc: u64,
    avail: u64,
    used: u64,
}

impl Rings {
    fn at(base: u64) -> Rings {
        Rings { desc: base, avail: base + 0x1000, used: base + 0x2000 }
    }
}

struct Driver {
    machine: Machine,
    recorded: RecordingOutputs,
    frames_in: Arc<Mutex<std::collections::VecDeque<Vec<u8>>>>,
}

fn regs() -> kvm_regs {
    kvm_regs { rip: 0x20_0000, ..Default::default() }
}

impl Driver {
    fn new() -> Driver {
        let recorded = RecordingOutputs::default();
        let memory = crate::memory::create(RAM).unwrap();
        let set = DeviceSet { net_mac: Some(MAC), disk_bytes: Some(DISK_BYTES) };
        let inputs = FakeInputs::default();
        let frames_in = inputs.frames.clone();
        let machine = Machine::new(memory, set, Box::new(inputs), Box::new(recorded.clone()));
        Driver { machine, recorded, frames_in }
    }

    fn write32(&mut self, addr: u64, value: u32) -> Action {
        self.machine
            .handle_exit(Exit::MmioWrite { addr, size: 4, value: u64::from(value) }, &regs())
    }

    fn read32(&mut self, addr: u64) -> u32 {
        match self.machine.handle_exit(Exit::MmioRead { addr, size: 4 }, &regs()) {
            Action::Resume { read_value: Some(value) } => value as u32,
            other => panic!("read of {addr:#x}: {other:?}"),
        }
    }

    /// The virtio 1.x handshake with `features`; returns whether FEATURES_OK stuck.
    fn handshake(&mut self, base: u64, features: u64) -> bool {
        self.write32(base + 0x70, 0);
        self.write32(base + 0x70, 1 | 2);
        self.write32(base + 0x24, 0);
        self.write32(base + 0x20, features as u32);
        self.write32(base + 0x24, 1);
        self.write32(base + 0x20, (features >> 32) as u32);
        self.write32(base + 0x70, 1 | 2 | 8);
        self.read32(base + 0x70) & 8 != 0
    }

    fn setup_queue(&mut self, base: u64, index: u32, rings: Rings) {
        self.write32(base + 0x30, index);
        self.write32(base + 0x38, u32::from(QUEUE_SIZE));
        for (offset, addr) in [(0x80, rings.desc), (0x90, rings.avail), (0xa0, rings.used)] {
            self.write32(base + offset, addr as u32);
            self.write32(base + offset + 4, (addr >> 32) as u32);
        }
        self.write32(base + 0x44, 1);
    }

    fn driver_ok(&mut self, base: u64) {
        let status = self.read32(base + 0x70);
        self.write32(base + 0x70, status | 4);
    }

    /// Writes a descriptor chain of `(addr, len, device_writable)` starting at
    /// descriptor `first` and makes it available.
    fn push_chain(&mut self, rings: Rings, first: u16, parts: &[(u64, u32, bool)]) {
        let memory = &self.machine.memory;
        for (i, &(addr, len, writable)) in parts.iter().enumerate() {
            let index = first + i as u16;
            let has_next = i + 1 < parts.len();
            let flags = u16::from(has_next) | if writable { 2 } else { 0 };
            let desc = rings.desc + 16 * u64::from(index);
            memory.write_obj(addr, GuestAddress(desc)).unwrap();
            memory.write_obj(len, GuestAddress(desc + 8)).unwrap();
            memory.write_obj(flags, GuestAddress(desc + 12)).unwrap();
            memory.write_obj(index + 1, GuestAddress(desc + 14)).unwrap();
        }
        let avail_idx: u16 = memory.read_obj(GuestAddress(rings.avail + 2)).unwrap();
        let slot = rings.avail + 4 + 2 * u64::from(avail_idx % QUEUE_SIZE);
        memory.write_obj(first, GuestAddress(slot)).unwrap();
        memory.write_obj(avail_idx.wrapping_add(1), GuestAddress(rings.avail + 2)).unwrap();
    }

    fn used(&self, rings: Rings, slot: u16) -> (u16, u32, u32) {
        let memory = &self.machine.memory;
        let idx: u16 = memory.read_obj(GuestAddress(rings.used + 2)).unwrap();
        let elem = rings.used + 4 + 8 * u64::from(slot);
        (
            idx,
            memory.read_obj(GuestAddress(elem)).unwrap(),
            memory.read_obj(GuestAddress(elem + 4)).unwrap(),
        )
    }

    fn pending(&mut self) -> u64 {
        match self
            .machine
            .handle_exit(Exit::MmioRead { addr: events::BASE + events::YIELD, size: 8 }, &regs())
        {
            Action::Resume { read_value: Some(value) } => value,
            other => panic!("{other:?}"),
        }
    }
}

const VERSION_1: u64 = 1 << 32;

#[test]
fn handshake_refuses_unknown_features() {
    let mut driver = Driver::new();
    assert_eq!(driver.read32(BLOCK_BASE), 0x7472_6976);
    assert_eq!(driver.read32(BLOCK_BASE + 4), 2);
    assert_eq!(driver.read32(BLOCK_BASE + 8), 2, "block device id");
    assert_eq!(driver.read32(NET_BASE + 8), 1, "net device id");
    assert!(!driver.handshake(BLOCK_BASE, VERSION_1 | (1 << 20)), "an unoffered feature");
    assert!(!driver.handshake(BLOCK_BASE, 1 << 9), "legacy (no VERSION_1)");
    assert!(driver.handshake(BLOCK_BASE, VERSION_1 | (1 << 9)));
    let capacity = u64::from(driver.read32(BLOCK_BASE + 0x100))
        | (u64::from(driver.read32(BLOCK_BASE + 0x104)) << 32);
    assert_eq!(capacity, DISK_BYTES / 512);
}

fn block_request(
    driver: &mut Driver,
    rings: Rings,
    first: u16,
    kind: u32,
    sector: u64,
    data: (u64, u32, bool),
) {
    let header = 0x30_0000 + u64::from(first) * 0x100;
    driver.machine.memory.write_obj(kind, GuestAddress(header)).unwrap();
    driver.machine.memory.write_obj(sector, GuestAddress(header + 8)).unwrap();
    let status = header + 0x80;
    driver.machine.memory.write_obj(0xffu8, GuestAddress(status)).unwrap();
    driver.push_chain(rings, first, &[(header, 16, false), data, (status, 1, true)]);
    driver.write32(BLOCK_BASE + 0x50, 0);
}

fn block_status(driver: &Driver, first: u16) -> u8 {
    driver
        .machine
        .memory
        .read_obj(GuestAddress(0x30_0000 + u64::from(first) * 0x100 + 0x80))
        .unwrap()
}

#[test]
fn block_reads_writes_and_refuses_out_of_range() {
    let mut driver = Driver::new();
    let rings = Rings::at(0x10_0000);
    assert!(driver.handshake(BLOCK_BASE, VERSION_1));
    driver.setup_queue(BLOCK_BASE, 0, rings);
    driver.driver_ok(BLOCK_BASE);

    driver.machine.memory.write_slice(&[0x5a; 1024], GuestAddress(0x40_0000)).unwrap();
    block_request(&mut driver, rings, 0, 1, 3, (0x40_0000, 1024, false));
    assert_eq!(block_status(&driver, 0), 0);
    assert_eq!(driver.recorded.0.lock().unwrap().writes, vec![(3 * 512, vec![0x5a; 1024])]);
    assert_eq!(driver.used(rings, 0), (1, 0, 1));
    assert_eq!(driver.pending() & events::BLOCK, events::BLOCK);

    block_request(&mut driver, rings, 3, 0, 0, (0x50_0000, 512, true));
    assert_eq!(block_status(&driver, 3), 0);
    let mut read = [0u8; 512];
    driver.machine.memory.read_slice(&mut read, GuestAddress(0x50_0000)).unwrap();
    assert!(read.iter().all(|byte| *byte == DISK_FILL));
    assert_eq!(driver.used(rings, 1), (2, 3, 513));

    block_request(&mut driver, rings, 6, 0, DISK_BYTES / 512, (0x50_0000, 512, true));
    assert_eq!(block_status(&driver, 6), 1, "past the end is an I/O error");
    block_request(&mut driver, rings, 9, 1, 0, (0x40_0000, 100, false));
    assert_eq!(block_status(&driver, 9), 1, "a partial sector is an I/O error");
    block_request(&mut driver, rings, 12, 4, 0, (0x40_0000, 0, false));
    assert_eq!(block_status(&driver, 12), 0);
    assert_eq!(driver.recorded.0.lock().unwrap().flushes, 1);
    assert_eq!(driver.machine.devices.block.as_ref().unwrap().device().requests(), 5);
}

#[test]
fn net_transmits_and_receives() {
    let mut driver = Driver::new();
    let (rx, tx) = (Rings::at(0x10_0000), Rings::at(0x20_0000));
    assert!(driver.handshake(NET_BASE, VERSION_1 | (1 << 5)));
    let mac: Vec<u8> = (0..6)
        .map(|i| {
            driver
                .machine
                .handle_exit(Exit::MmioRead { addr: NET_BASE + 0x100 + i, size: 1 }, &regs())
        })
        .map(|action| match action {
            Action::Resume { read_value: Some(value) } => value as u8,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(mac, MAC);
    driver.setup_queue(NET_BASE, 0, rx);
    driver.setup_queue(NET_BASE, 1, tx);
    driver.driver_ok(NET_BASE);

    let frame: Vec<u8> = (0..60).collect();
    let mut packet = vec![0u8; 12];
    packet.extend_from_slice(&frame);
    driver.machine.memory.write_slice(&packet, GuestAddress(0x60_0000)).unwrap();
    driver.push_chain(tx, 0, &[(0x60_0000, 12, false), (0x60_000c, 60, false)]);
    driver.write32(NET_BASE + 0x50, 1);
    assert_eq!(driver.recorded.0.lock().unwrap().frames, vec![packet.clone()]);
    assert_eq!(driver.used(tx, 0).0, 1);

    // A receive buffer, then a frame from the host: delivered at the next landmark.
    driver.push_chain(rx, 0, &[(0x70_0000, 2048, true)]);
    driver.write32(NET_BASE + 0x50, 0);
    driver.machine_inputs_push(plain_packet(&frame));
    assert_eq!(driver.pending() & events::NET, events::NET);
    let (idx, id, len) = driver.used(rx, 0);
    assert_eq!((idx, id, len), (1, 0, 12 + 60));
    let mut delivered = vec![0u8; 72];
    driver.machine.memory.read_slice(&mut delivered, GuestAddress(0x70_0000)).unwrap();
    assert_eq!(&delivered[12..], frame.as_slice());
    assert_eq!(delivered[10], 1, "num_buffers");
}

/// A driver with every offload negotiated and both queues live.
fn offloading_driver() -> (Driver, Rings, Rings) {
    let mut driver = Driver::new();
    let (rx, tx) = (Rings::at(0x10_0000), Rings::at(0x20_0000));
    let features = VERSION_1
        | feature::MAC
        | feature::CSUM
        | feature::GUEST_CSUM
        | feature::HOST_TSO4
        | feature::GUEST_TSO4;
    assert!(driver.handshake(NET_BASE, features));
    driver.setup_queue(NET_BASE, 0, rx);
    driver.setup_queue(NET_BASE, 1, tx);
    driver.driver_ok(NET_BASE);
    (driver, rx, tx)
}

fn tso_header(gso_size: u16, hdr_len: u16, csum_start: u16, csum_offset: u16) -> NetHeader {
    NetHeader { flags: 1, gso_type: 1, hdr_len, gso_size, csum_start, csum_offset, num_buffers: 0 }
}

#[test]
fn net_passes_a_large_segment_whole_both_ways() {
    let (mut driver, rx, tx) = offloading_driver();
    let mut packet = tso_header(1448, 66, 34, 16).to_bytes().to_vec();
    packet.extend((0..60_000u32).map(|i| i as u8));
    driver.machine.memory.write_slice(&packet, GuestAddress(0x60_0000)).unwrap();
    driver.push_chain(tx, 0, &[(0x60_0000, packet.len() as u32, false)]);
    driver.write32(NET_BASE + 0x50, 1);
    assert_eq!(driver.recorded.0.lock().unwrap().frames, vec![packet.clone()], "one output");

    // A 60 KB segment from the host lands in one big receive buffer, header kept.
    driver.push_chain(rx, 0, &[(0x70_0000, 70_000, true)]);
    driver.machine_inputs_push(packet.clone());
    assert_eq!(driver.pending() & events::NET, events::NET);
    let (idx, _, len) = driver.used(rx, 0);
    assert_eq!((idx, len as usize), (1, packet.len()));
    let mut delivered = vec![0u8; packet.len()];
    driver.machine.memory.read_slice(&mut delivered, GuestAddress(0x70_0000)).unwrap();
    let header = NetHeader::parse(&delivered);
    assert_eq!((header.gso_type, header.gso_size, header.num_buffers), (1, 1448, 1));
    assert_eq!(&delivered[12..], &packet[12..]);
}

#[test]
fn net_refuses_nonsense_offload_headers_and_stays_live() {
    let (mut driver, _rx, tx) = offloading_driver();
    let bad = [
        tso_header(0, 66, 34, 16),
        tso_header(1448, 0, 34, 16),
        tso_header(1448, 65_000, 34, 16),
        tso_header(1448, 66, 60_000, 16),
        tso_header(1448, 66, 34, 60_000),
        NetHeader { gso_type: 0x40, ..tso_header(1448, 66, 34, 16) },
        NetHeader { flags: 0xff, ..NetHeader::default() },
    ];
    for (slot, header) in bad.iter().enumerate() {
        let addr = 0x60_0000 + slot as u64 * 0x1_0000;
        let mut packet = header.to_bytes().to_vec();
        packet.extend(std::iter::repeat_n(0x5a, 5000));
        driver.machine.memory.write_slice(&packet, GuestAddress(addr)).unwrap();
        driver.push_chain(tx, slot as u16, &[(addr, packet.len() as u32, false)]);
    }
    driver.write32(NET_BASE + 0x50, 1);
    assert!(driver.recorded.0.lock().unwrap().frames.is_empty(), "nothing reached the host");
    assert_eq!(driver.used(tx, 0).0, bad.len() as u16, "every buffer returned");
    assert_eq!(driver.machine.misbehaviour.count(Offence::BadNetHeader), bad.len() as u64);
    let net = driver.machine.devices.net.as_ref().unwrap();
    assert!(net.is_live(), "the device goes on");
    assert_eq!(net.device().refused_dropped_truncated().0, bad.len() as u64);

    // ... and a sane packet after them still goes out.
    let mut packet = NetHeader::default().to_bytes().to_vec();
    packet.extend_from_slice(&[7; 60]);
    driver.machine.memory.write_slice(&packet, GuestAddress(0x68_0000)).unwrap();
    driver.push_chain(tx, 8, &[(0x68_0000, packet.len() as u32, false)]);
    driver.write32(NET_BASE + 0x50, 1);
    assert_eq!(driver.recorded.0.lock().unwrap().frames, vec![packet]);
}

impl Driver {
    /// Queues a frame in the fake inputs (delivered when the guest has room).
    fn machine_inputs_push(&mut self, frame: Vec<u8>) {
        self.frames_in.lock().unwrap().push_back(frame);
    }
}

proptest! {
    /// Random register writes and random descriptor tables, avail rings and
    /// notifications: the VMM never panics, never writes outside guest RAM
    /// (vm-memory refuses), and every exit stays a landmark.
    #[test]
    fn hostile_virtio_traffic_is_survived(
        handshake in any::<bool>(),
        table in proptest::collection::vec(any::<u8>(), 16 * QUEUE_SIZE as usize),
        avail_idx in any::<u16>(),
        ring in proptest::collection::vec(any::<u16>(), QUEUE_SIZE as usize),
        writes in proptest::collection::vec((0u64..0x120, any::<u32>()), 0..40),
        notifies in proptest::collection::vec(0u32..4, 1..6),
    ) {
        let mut driver = Driver::new();
        for base in [BLOCK_BASE, NET_BASE] {
            let rings = Rings::at(0x10_0000);
            if handshake {
                driver.handshake(base, VERSION_1 | (1 << 5) | (1 << 9));
                driver.setup_queue(base, 0, rings);
                driver.setup_queue(base, 1, Rings::at(0x20_0000));
                driver.driver_ok(base);
            }
            driver.machine.memory.write_slice(&table, GuestAddress(rings.desc)).unwrap();
            driver.machine.memory.write_obj(avail_idx, GuestAddress(rings.avail + 2)).unwrap();
            for (slot, head) in ring.iter().enumerate() {
                driver.machine.memory.write_obj(*head, GuestAddress(rings.avail + 4 + 2 * slot as u64)).unwrap();
            }
            for (offset, value) in &writes {
                driver.write32(base + (offset & !3), *value);
            }
            for queue in &notifies {
                let action = driver.write32(base + 0x50, *queue);
                prop_assert_eq!(action, Action::Resume { read_value: None });
            }
            driver.machine_inputs_push(vec![0xab; 1500]);
            let _ = driver.pending();
        }
        let _ = driver.machine.misbehaviour.count(Offence::BadVirtioUse);
    }
}
