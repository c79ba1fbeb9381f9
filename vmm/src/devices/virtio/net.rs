//! virtio-net: one receive and one transmit queue, the MAC in config space,
//! and the offloads of the TAP's virtio-net header: checksum offload both ways
//! (`CSUM`, `GUEST_CSUM`), TCP segmentation on transmit (`HOST_TSO4`) and
//! large receive (`GUEST_TSO4`, into big receive buffers).
//!
//! What crosses the VMM's outputs and inputs is a *packet*: the 12-byte
//! `virtio_net_hdr` followed by the Ethernet frame, exactly what the TAP
//! (opened with `IFF_VNET_HDR`) reads and writes. So a 64 KiB TCP segment is
//! one output, one TAP write, and on receive one input entry in the log.
//!
//! Every header the guest writes is checked against the negotiated features
//! and the frame it describes before it reaches the host kernel; a packet
//! whose header is nonsense is refused (counted as misbehaviour, its buffer
//! returned) and the device goes on. The TAP is told which receive offloads
//! the driver accepted (through the inputs, `Armed::net_guest_offloads`), and
//! received packets are shaped to them all the same: a partial checksum is
//! completed here for a driver without `GUEST_CSUM`, and a large segment is
//! dropped for one without `GUEST_TSO4` (one queued before a reset).
use std::io::{Read, Write};

use crate::memory::GuestRam;
use thiserror::Error;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_MAC, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
};
use virtio_queue::{Queue, QueueT, Reader, Writer};
use xxhash_rust::xxh3::Xxh3;

use super::{QueueFault, VirtioDevice, VirtioMmio, FEATURE_VERSION_1};
use crate::devices::DeviceCtx;
use crate::misbehaviour::Offence;
use crate::snapshot::{Persist, SnapshotError};
use ftvm_abi::mmio::{events, virtio::NET_BASE};
use serde::{Deserialize, Serialize};

const DEVICE_ID_NET: u32 = 1;
const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: &[u16] = &[256, 256];
/// Where a refused transmit header is reported (the QueueNotify register).
const TX_NOTIFY_ADDR: u64 = NET_BASE + 0x50;

/// The feature bits this device offers.
pub mod feature {
    use super::*;
    /// The driver leaves transmit checksums to the device (`NEEDS_CSUM`).
    pub const CSUM: u64 = 1 << VIRTIO_NET_F_CSUM;
    /// The driver accepts received packets with partial checksums.
    pub const GUEST_CSUM: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM;
    /// The device has a MAC address in its config space.
    pub const MAC: u64 = 1 << VIRTIO_NET_F_MAC;
    /// The driver takes TCP/IPv4 segments larger than the MTU.
    pub const GUEST_TSO4: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;
    /// The driver hands the device TCP/IPv4 segments to cut (TSO).
    pub const HOST_TSO4: u64 = 1 << VIRTIO_NET_F_HOST_TSO4;
}

/// `struct virtio_net_hdr` with VERSION_1: flags, gso_type, hdr_len,
/// gso_size, csum_start, csum_offset, num_buffers.
pub const HEADER_BYTES: usize = 12;
const ETHERNET_HEADER_BYTES: usize = 14;
/// The largest frame without segmentation: 1500-byte MTU plus Ethernet and a VLAN tag.
const MAX_PLAIN_FRAME_BYTES: usize = ETHERNET_HEADER_BYTES + 4 + 1500;
/// The largest frame of a TSO packet: a 64 KiB IPv4 packet plus Ethernet and a VLAN tag.
pub const MAX_FRAME_BYTES: usize = ETHERNET_HEADER_BYTES + 4 + 65_535;
/// The largest packet (header included) either way.
pub const MAX_PACKET_BYTES: usize = HEADER_BYTES + MAX_FRAME_BYTES;
/// The smallest segment size accepted for TSO: the IPv4 minimum MSS (RFC 879)
/// less options, so a guest cannot make the host cut 64 KiB into 1-byte segments.
const MIN_GSO_SIZE: u16 = 88;
/// A TCP header without options, and the offset of its checksum.
const TCP_HEADER_BYTES: usize = 20;
const TCP_CHECKSUM_OFFSET: u16 = 16;

/// The fields of a `virtio_net_hdr` (VERSION_1 layout, little endian).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHeader {
    /// NEEDS_CSUM, DATA_VALID.
    pub flags: u8,
    /// GSO_NONE or GSO_TCPV4 here.
    pub gso_type: u8,
    /// Bytes of Ethernet, IP and TCP headers (with TSO).
    pub hdr_len: u16,
    /// Payload bytes per segment (with TSO).
    pub gso_size: u16,
    /// Where checksumming starts, from the start of the frame (with NEEDS_CSUM).
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start` (with NEEDS_CSUM).
    pub csum_offset: u16,
    /// Receive buffers this packet spans (receive only; always 1 here).
    pub num_buffers: u16,
}

impl NetHeader {
    /// Parses the header at the start of `packet`, which holds at least
    /// [`HEADER_BYTES`].
    pub fn parse(packet: &[u8]) -> NetHeader {
        let word = |at: usize| u16::from_le_bytes([packet[at], packet[at + 1]]);
        NetHeader {
            flags: packet[0],
            gso_type: packet[1],
            hdr_len: word(2),
            gso_size: word(4),
            csum_start: word(6),
            csum_offset: word(8),
            num_buffers: word(10),
        }
    }

    /// The header's wire form.
    pub fn to_bytes(self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[0] = self.flags;
        bytes[1] = self.gso_type;
        for (at, value) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
            (10, self.num_buffers),
        ] {
            bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    fn needs_csum(self) -> bool {
        u32::from(self.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// Whether the checksum range lies in a frame of `frame_bytes`.
    fn checksum_fits(self, frame_bytes: usize) -> bool {
        usize::from(self.csum_start) + usize::from(self.csum_offset) + 2 <= frame_bytes
    }
}

/// A packet with no offloads: a zero header, then `frame` (what the VMM itself
/// sends, e.g. the RARP announcement of a backup going live).
pub fn plain_packet(frame: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(HEADER_BYTES + frame.len());
    packet.extend_from_slice(&NetHeader::default().to_bytes());
    packet.extend_from_slice(frame);
    packet
}

/// Why a transmit header was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Flags other than NEEDS_CSUM on transmit.
    #[error("unknown header flags {0:#x}")]
    UnknownFlags(u8),
    /// NEEDS_CSUM without the CSUM feature.
    #[error("NEEDS_CSUM without the CSUM feature")]
    ChecksumNotNegotiated,
    /// The checksum range runs past the frame.
    #[error("csum_start {start} + csum_offset {offset} lies outside the {frame_bytes}-byte frame")]
    ChecksumOutsideFrame {
        /// csum_start.
        start: u16,
        /// csum_offset.
        offset: u16,
        /// The frame's length.
        frame_bytes: usize,
    },
    /// A GSO type other than TCPv4 (with or without the ECN bit).
    #[error("GSO type {0:#x} is not offered")]
    UnknownGsoType(u8),
    /// TSO without HOST_TSO4.
    #[error("TSO without the HOST_TSO4 feature")]
    TsoNotNegotiated,
    /// TSO without NEEDS_CSUM on the TCP checksum.
    #[error("TSO without NEEDS_CSUM at the TCP checksum")]
    TsoWithoutChecksum,
    /// A segment size below the minimum or past the packet.
    #[error("gso_size {0} is nonsense")]
    BadGsoSize(u16),
    /// hdr_len does not cover the TCP header or runs past the frame.
    #[error("hdr_len {hdr_len} is nonsense for a {frame_bytes}-byte frame")]
    BadHeaderLength {
        /// hdr_len.
        hdr_len: u16,
        /// The frame's length.
        frame_bytes: usize,
    },
    /// A frame larger than the MTU without TSO, or than 64 KiB with it.
    #[error("a {0}-byte frame is too large")]
    FrameTooLarge(usize),
}

impl HeaderError {
    /// A small code for the misbehaviour report.
    fn code(self) -> u64 {
        match self {
            HeaderError::UnknownFlags(_) => 1,
            HeaderError::ChecksumNotNegotiated => 2,
            HeaderError::ChecksumOutsideFrame { .. } => 3,
            HeaderError::UnknownGsoType(_) => 4,
            HeaderError::TsoNotNegotiated => 5,
            HeaderError::TsoWithoutChecksum => 6,
            HeaderError::BadGsoSize(_) => 7,
            HeaderError::BadHeaderLength { .. } => 8,
            HeaderError::FrameTooLarge(_) => 9,
        }
    }
}

/// Checks a transmit header against the negotiated `features` and the
/// `frame_bytes` it describes: what passes is safe to hand the host kernel.
pub fn check_transmit(
    header: NetHeader,
    frame_bytes: usize,
    features: u64,
) -> Result<(), HeaderError> {
    if u32::from(header.flags) & !VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        return Err(HeaderError::UnknownFlags(header.flags));
    }
    if header.needs_csum() {
        if features & feature::CSUM == 0 {
            return Err(HeaderError::ChecksumNotNegotiated);
        }
        if !header.checksum_fits(frame_bytes) {
            return Err(HeaderError::ChecksumOutsideFrame {
                start: header.csum_start,
                offset: header.csum_offset,
                frame_bytes,
            });
        }
    }
    match u32::from(header.gso_type) {
        VIRTIO_NET_HDR_GSO_NONE => {
            if frame_bytes > MAX_PLAIN_FRAME_BYTES {
                return Err(HeaderError::FrameTooLarge(frame_bytes));
            }
            Ok(())
        }
        VIRTIO_NET_HDR_GSO_TCPV4 => {
            if features & feature::HOST_TSO4 == 0 {
                return Err(HeaderError::TsoNotNegotiated);
            }
            if !header.needs_csum() || header.csum_offset != TCP_CHECKSUM_OFFSET {
                return Err(HeaderError::TsoWithoutChecksum);
            }
            if frame_bytes > MAX_FRAME_BYTES {
                return Err(HeaderError::FrameTooLarge(frame_bytes));
            }
            let hdr_len = usize::from(header.hdr_len);
            let tcp_start = usize::from(header.csum_start);
            if hdr_len < tcp_start + TCP_HEADER_BYTES || hdr_len >= frame_bytes {
                return Err(HeaderError::BadHeaderLength { hdr_len: header.hdr_len, frame_bytes });
            }
            if header.gso_size < MIN_GSO_SIZE
                || usize::from(header.gso_size) > MAX_PLAIN_FRAME_BYTES
            {
                return Err(HeaderError::BadGsoSize(header.gso_size));
            }
            Ok(())
        }
        _ => Err(HeaderError::UnknownGsoType(header.gso_type)),
    }
}

/// The Internet checksum (RFC 1071) of `bytes`, complemented, as stored.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut words = bytes.chunks_exact(2);
    for pair in &mut words {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What a received packet becomes for this driver: the header it sees, and
/// whether the VMM must complete a partial checksum first (`None`: drop it).
fn shape_receive(
    header: NetHeader,
    frame_bytes: usize,
    features: u64,
) -> Option<(NetHeader, bool)> {
    let mut shaped = NetHeader { num_buffers: 1, ..NetHeader::default() };
    let mut complete_here = false;
    if u32::from(header.gso_type) != VIRTIO_NET_HDR_GSO_NONE {
        if features & feature::GUEST_TSO4 == 0
            || u32::from(header.gso_type) != VIRTIO_NET_HDR_GSO_TCPV4
        {
            return None;
        }
        shaped.gso_type = header.gso_type;
        shaped.gso_size = header.gso_size;
        shaped.hdr_len = header.hdr_len;
    }
    if header.needs_csum() {
        if !header.checksum_fits(frame_bytes) {
            return None;
        }
        if features & feature::GUEST_CSUM != 0 {
            shaped.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
            shaped.csum_start = header.csum_start;
            shaped.csum_offset = header.csum_offset;
        } else {
            complete_here = true;
        }
    } else if features & feature::GUEST_CSUM != 0
        && u32::from(header.flags) & VIRTIO_NET_HDR_F_DATA_VALID != 0
    {
        shaped.flags = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    }
    Some((shaped, complete_here))
}

/// Completes the partial checksum `header` describes (its range was checked).
fn complete_checksum(header: NetHeader, frame: &mut [u8]) {
    let start = usize::from(header.csum_start);
    let at = start + usize::from(header.csum_offset);
    let checksum = internet_checksum(&frame[start..]);
    frame[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
}

/// The network device's saved state (the transmit hash chains on from its value).
#[derive(Serialize, Deserialize)]
pub struct NetState {
    mac: [u8; 6],
    driver_features: u64,
    tx_hash: u64,
    tx_frames: u64,
    tx_refused: u64,
    rx_frames: u64,
    rx_truncated: u64,
    rx_dropped: u64,
}

impl Persist for Net {
    type State = NetState;

    fn save(&self) -> NetState {
        NetState {
            mac: self.mac,
            driver_features: self.driver_features,
            tx_hash: self.tx_hash.digest(),
            tx_frames: self.tx_frames,
            tx_refused: self.tx_refused,
            rx_frames: self.rx_frames,
            rx_truncated: self.rx_truncated,
            rx_dropped: self.rx_dropped,
        }
    }

    fn restore(state: NetState) -> Result<Self, SnapshotError> {
        Ok(Net {
            mac: state.mac,
            driver_features: state.driver_features,
            tx_hash: Xxh3::with_seed(state.tx_hash),
            tx_frames: state.tx_frames,
            tx_refused: state.tx_refused,
            rx_frames: state.rx_frames,
            rx_truncated: state.rx_truncated,
            rx_dropped: state.rx_dropped,
            scratch: Vec::new(),
        })
    }
}

/// The network device model.
pub struct Net {
    mac: [u8; 6],
    driver_features: u64,
    tx_hash: Xxh3,
    tx_frames: u64,
    tx_refused: u64,
    rx_frames: u64,
    rx_truncated: u64,
    rx_dropped: u64,
    /// Reused for every transmitted packet (no 64 KiB allocation per packet).
    scratch: Vec<u8>,
}

impl Net {
    /// A NIC with this MAC address.
    pub fn new(mac: [u8; 6]) -> Self {
        Net {
            mac,
            driver_features: 0,
            tx_hash: Xxh3::new(),
            tx_frames: 0,
            tx_refused: 0,
            rx_frames: 0,
            rx_truncated: 0,
            rx_dropped: 0,
            scratch: Vec::new(),
        }
    }

    /// Its MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Packets the guest transmitted, and a hash of all of them in order.
    pub fn transmitted(&self) -> (u64, u64) {
        (self.tx_frames, self.tx_hash.digest())
    }

    /// Packets delivered to the guest.
    pub fn received(&self) -> u64 {
        self.rx_frames
    }

    /// Transmit packets refused for their header, received packets dropped
    /// (not what the driver negotiated) and truncated (buffer too small).
    pub fn refused_dropped_truncated(&self) -> (u64, u64, u64) {
        (self.tx_refused, self.rx_dropped, self.rx_truncated)
    }

    fn transmit_all(&mut self, queue: &mut Queue, ctx: &mut DeviceCtx) -> Result<bool, QueueFault> {
        let memory = ctx.memory;
        while let Some(chain) = queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let mut reader = Reader::new(memory, chain).map_err(|_| QueueFault::Guest)?;
            let len = reader.available_bytes();
            if !(HEADER_BYTES..=MAX_PACKET_BYTES).contains(&len) {
                return Err(QueueFault::Guest);
            }
            if self.scratch.len() < len {
                self.scratch.resize(len, 0);
            }
            let packet = &mut self.scratch[..len];
            reader.read_exact(packet).map_err(|_| QueueFault::Guest)?;
            let header = NetHeader::parse(packet);
            match check_transmit(header, len - HEADER_BYTES, self.driver_features) {
                Ok(()) => {
                    self.tx_hash.update(&(len as u64).to_le_bytes());
                    self.tx_hash.update(packet);
                    self.tx_frames += 1;
                    ctx.outputs.transmit(packet);
                }
                Err(error) => {
                    self.tx_refused += 1;
                    ctx.misbehaviour.record(Offence::BadNetHeader, TX_NOTIFY_ADDR, error.code());
                }
            }
            queue.add_used(memory, head, 0).map_err(|_| QueueFault::Guest)?;
        }
        // Transmit completions raise no event: the driver reclaims its
        // buffers on its next poll anyway, and an event would cost the guest
        // one more exit per batch (its next wait would return at once).
        Ok(false)
    }
}

impl VirtioDevice for Net {
    fn device_id(&self) -> u32 {
        DEVICE_ID_NET
    }

    fn features(&self) -> u64 {
        FEATURE_VERSION_1
            | feature::MAC
            | feature::CSUM
            | feature::GUEST_CSUM
            | feature::HOST_TSO4
            | feature::GUEST_TSO4
    }

    fn set_driver_features(&mut self, features: u64) {
        self.driver_features = features;
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        QUEUE_SIZES
    }

    fn config(&self) -> Vec<u8> {
        self.mac.to_vec()
    }

    fn event_bit(&self) -> u64 {
        events::NET
    }

    fn process(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        ctx: &mut DeviceCtx,
    ) -> Result<bool, QueueFault> {
        match index {
            TX => self.transmit_all(&mut queues[TX], ctx),
            // New receive buffers: frames are delivered at the next landmark.
            _ => Ok(false),
        }
    }
}

impl VirtioMmio<Net> {
    /// The receive offloads the driver accepted (`GUEST_CSUM`, `GUEST_TSO4`
    /// bits; none until it is live): what the TAP may hand over.
    pub fn guest_offloads(&self) -> u64 {
        match self.is_live() {
            true => self.device.driver_features & (feature::GUEST_CSUM | feature::GUEST_TSO4),
            false => 0,
        }
    }

    /// How many packets the guest can take now (posted receive buffers).
    pub fn rx_capacity(&self, memory: &GuestRam) -> usize {
        if !self.is_live() {
            return 0;
        }
        let queue = &self.queues[RX];
        if !queue.ready() {
            return 0;
        }
        match queue.avail_idx(memory, std::sync::atomic::Ordering::Acquire) {
            Ok(avail) => usize::from((avail - std::num::Wrapping(queue.next_avail())).0),
            Err(_) => 0,
        }
    }

    /// Writes `packet` (a virtio-net header from the host, then the frame)
    /// into the next receive buffer, shaped to the negotiated offloads. The
    /// caller checked `rx_capacity`; a buffer too small for the frame gets it
    /// truncated, and a packet the driver cannot take is dropped.
    pub fn deliver(&mut self, packet: &[u8], ctx: &mut DeviceCtx) -> Result<(), QueueFault> {
        let memory = ctx.memory;
        let (net, queues) = self.device_and_queues();
        if !(HEADER_BYTES..=MAX_PACKET_BYTES).contains(&packet.len()) {
            net.rx_dropped += 1;
            return Ok(());
        }
        let header = NetHeader::parse(packet);
        let mut frame = std::borrow::Cow::Borrowed(&packet[HEADER_BYTES..]);
        let Some((shaped, complete_here)) = shape_receive(header, frame.len(), net.driver_features)
        else {
            net.rx_dropped += 1;
            return Ok(());
        };
        if complete_here {
            // Only then is the frame copied.
            complete_checksum(header, frame.to_mut());
        }
        let queue = &mut queues[RX];
        let chain = queue.pop_descriptor_chain(memory).ok_or(QueueFault::Guest)?;
        let head = chain.head_index();
        let mut writer = Writer::new(memory, chain).map_err(|_| QueueFault::Guest)?;
        let room = writer.available_bytes();
        if room < HEADER_BYTES {
            return Err(QueueFault::Guest);
        }
        let fits = frame.len().min(room - HEADER_BYTES);
        if fits < frame.len() {
            net.rx_truncated += 1;
        }
        writer.write_all(&shaped.to_bytes()).map_err(|_| QueueFault::Guest)?;
        writer.write_all(&frame[..fits]).map_err(|_| QueueFault::Guest)?;
        queue
            .add_used(memory, head, (HEADER_BYTES + fits) as u32)
            .map_err(|_| QueueFault::Guest)?;
        net.rx_frames += 1;
        self.signal_used(ctx);
        Ok(())
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    const ALL: u64 = feature::CSUM | feature::GUEST_CSUM | feature::HOST_TSO4 | feature::GUEST_TSO4;

    fn tso(gso_size: u16, hdr_len: u16, csum_start: u16, csum_offset: u16) -> NetHeader {
        NetHeader {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            hdr_len,
            gso_size,
            csum_start,
            csum_offset,
            num_buffers: 0,
        }
    }

    #[test]
    fn a_header_round_trips_through_its_wire_form() {
        let header = tso(1448, 66, 34, 16);
        assert_eq!(NetHeader::parse(&header.to_bytes()), header);
    }

    #[test]
    fn sane_headers_pass() {
        assert_eq!(check_transmit(NetHeader::default(), 60, 0), Ok(()));
        assert_eq!(check_transmit(tso(1448, 66, 34, 16), 65_000, ALL), Ok(()));
    }

    #[test]
    fn nonsense_transmit_headers_are_refused() {
        let cases = [
            (tso(0, 66, 34, 16), ALL, HeaderError::BadGsoSize(0)),
            (tso(1, 66, 34, 16), ALL, HeaderError::BadGsoSize(1)),
            (tso(65_535, 66, 34, 16), ALL, HeaderError::BadGsoSize(65_535)),
            (
                tso(1448, 0, 34, 16),
                ALL,
                HeaderError::BadHeaderLength { hdr_len: 0, frame_bytes: 9000 },
            ),
            (
                tso(1448, 60_000, 34, 16),
                ALL,
                HeaderError::BadHeaderLength { hdr_len: 60_000, frame_bytes: 9000 },
            ),
            (
                tso(1448, 66, 9000, 16),
                ALL,
                HeaderError::ChecksumOutsideFrame { start: 9000, offset: 16, frame_bytes: 9000 },
            ),
            (
                tso(1448, 66, 34, 65_535),
                ALL,
                HeaderError::ChecksumOutsideFrame { start: 34, offset: 65_535, frame_bytes: 9000 },
            ),
            (tso(1448, 66, 34, 6), ALL, HeaderError::TsoWithoutChecksum),
            (tso(1448, 66, 34, 16), ALL & !feature::HOST_TSO4, HeaderError::TsoNotNegotiated),
            (tso(1448, 66, 34, 16), feature::HOST_TSO4, HeaderError::ChecksumNotNegotiated),
            (
                NetHeader { gso_type: 3, ..tso(1448, 66, 34, 16) },
                ALL,
                HeaderError::UnknownGsoType(3),
            ),
            (
                NetHeader { flags: 0x82, ..NetHeader::default() },
                ALL,
                HeaderError::UnknownFlags(0x82),
            ),
            (NetHeader::default(), ALL, HeaderError::FrameTooLarge(9000)),
        ];
        for (header, features, expected) in cases {
            assert_eq!(check_transmit(header, 9000, features), Err(expected), "{header:?}");
        }
        assert_eq!(
            check_transmit(tso(1448, 66, 34, 16), MAX_FRAME_BYTES + 1, ALL),
            Err(HeaderError::FrameTooLarge(MAX_FRAME_BYTES + 1))
        );
    }

    #[test]
    fn a_partial_checksum_is_completed_for_a_driver_without_guest_csum() {
        // A UDP-like payload: checksum over [4..], stored at [4 + 2].
        let mut frame = vec![0u8, 0, 0, 0, 0x12, 0x34, 0, 0, 0xab, 0xcd];
        let header = NetHeader {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            csum_start: 4,
            csum_offset: 2,
            ..NetHeader::default()
        };
        let (shaped, complete_here) = shape_receive(header, frame.len(), 0).expect("delivered");
        assert_eq!((shaped.flags, complete_here), (0, true));
        complete_checksum(header, &mut frame);
        assert_eq!(internet_checksum(&frame[4..]), 0, "the completed checksum verifies");
        let (passed, complete_here) =
            shape_receive(header, frame.len(), feature::GUEST_CSUM).unwrap();
        assert_eq!((passed.flags, passed.csum_start, passed.csum_offset), (1, 4, 2));
        assert!(!complete_here);
    }

    #[test]
    fn large_segments_and_bad_offsets_from_the_host_are_dropped_when_unusable() {
        let big = tso(1448, 66, 34, 16);
        assert_eq!(shape_receive(big, 20_000, feature::GUEST_CSUM), None);
        let (shaped, _) = shape_receive(big, 20_000, ALL).expect("a TSO driver takes it");
        assert_eq!((shaped.gso_size, shaped.hdr_len, shaped.num_buffers), (1448, 66, 1));
        let outside = NetHeader { csum_start: 19_990, ..big };
        assert_eq!(shape_receive(outside, 20_000, ALL), None);
    }

    proptest::proptest! {
        /// Any header with any frame length and features: checking never
        /// panics, what passes fits its frame, and a receive shaped with a
        /// checksum to complete completes inside the frame.
        #[test]
        fn any_header_is_checked_without_panicking(
            bytes in proptest::array::uniform12(proptest::prelude::any::<u8>()),
            frame_bytes in 0usize..70_000,
            features in proptest::prelude::any::<u64>(),
        ) {
            let header = NetHeader::parse(&bytes);
            if check_transmit(header, frame_bytes, features).is_ok() {
                proptest::prop_assert!(frame_bytes <= MAX_FRAME_BYTES);
                if header.needs_csum() {
                    proptest::prop_assert!(header.checksum_fits(frame_bytes));
                }
                if header.gso_type != 0 {
                    proptest::prop_assert!(features & feature::HOST_TSO4 != 0);
                    proptest::prop_assert!(usize::from(header.hdr_len) < frame_bytes);
                    proptest::prop_assert!(header.gso_size >= MIN_GSO_SIZE);
                }
            }
            if let Some((_, true)) = shape_receive(header, frame_bytes, features) {
                complete_checksum(header, &mut vec![0u8; frame_bytes]);
            }
        }
    }
}
