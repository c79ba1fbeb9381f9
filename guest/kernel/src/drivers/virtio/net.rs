//! The virtio-net driver and its smoltcp `phy::Device`.
//!
//! Built on virtio-drivers' split-ring `VirtQueue` and MMIO transport, with its
//! own buffer management so exits are batched: frames smoltcp transmits are
//! only queued, and [`NetDevice::flush`] notifies the device once for all of
//! them (the VMM sends them during that exit). Receive buffers are posted
//! once and re-posted as frames are consumed; the VMM fills them at landmarks
//! without being asked, so the receive queue is only notified when it ran low.
//!
//! Offloads, when the device offers them: TCP checksums are left to the
//! device both ways (`CSUM`, `GUEST_CSUM`: the driver writes the
//! pseudo-header sum and `NEEDS_CSUM`; received packets whose header vouches
//! for nothing are checked here), smoltcp hands over TCP segments of up to
//! ~64 KiB that the host cuts (`HOST_TSO4`, smoltcp's segmentation offload),
//! and the host hands over large segments whole into big receive buffers
//! (`GUEST_TSO4`). So a 64 KiB stream chunk is one buffer, one descriptor and
//! one host write instead of 45 frames.
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::num::NonZeroUsize;

use bitflags::bitflags;
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium, PacketMeta};
use smoltcp::time::Instant;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::{DeviceType, Transport};

use super::{open_transport, KernelHal, VirtioError};

/// Descriptors per queue (the VMM offers up to 256).
pub const QUEUE_SIZE: usize = 256;
/// The largest Ethernet frame (no FCS) on the wire: a 1500-byte IP MTU.
pub const MAX_FRAME_BYTES: usize = 1514;
/// `struct virtio_net_hdr` with VIRTIO_F_VERSION_1 (num_buffers included).
pub const HEADER_BYTES: usize = 12;
/// One buffer without offloads: header plus the largest frame, rounded up.
const SMALL_BUFFER_BYTES: usize = 2048;
/// One buffer with large segments: header, Ethernet, VLAN tag and a 64 KiB
/// IPv4 packet (the "big packets" size of the virtio spec), rounded up.
const LARGE_BUFFER_BYTES: usize = 65_600;
/// Large buffers posted (receive) and owned (transmit): 4 MiB each way.
const LARGE_BUFFERS: usize = 64;
/// The largest frame smoltcp builds for the device to cut: under the host's
/// 64 KiB GSO limit, so it is never cut again in software on the way.
const TSO_FRAME_BYTES: usize = 65_000;
const ETHERNET_HEADER_BYTES: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const PROTOCOL_TCP: u8 = 6;
const TCP_CHECKSUM_OFFSET: usize = 16;
/// `virtio_net_hdr` flags and GSO types.
const NEEDS_CSUM: u8 = 1;
const DATA_VALID: u8 = 2;
const GSO_TCPV4: u8 = 1;
const QUEUE_RECEIVE: u16 = 0;
const QUEUE_TRANSMIT: u16 = 1;

bitflags! {
    /// The feature bits this driver accepts.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct NetFeatures: u64 {
        /// The device computes transmit checksums (NEEDS_CSUM).
        const CSUM = 1 << 0;
        /// The driver takes received packets with partial checksums.
        const GUEST_CSUM = 1 << 1;
        /// The device has a MAC address in its config space.
        const MAC = 1 << 5;
        /// The driver takes large TCP/IPv4 segments (into big buffers).
        const GUEST_TSO4 = 1 << 7;
        /// The device cuts large TCP/IPv4 segments.
        const HOST_TSO4 = 1 << 11;
        /// Modern (virtio 1.x) device.
        const VERSION_1 = 1 << 32;
    }
}

/// Counters for diagnostics and benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    pub frames_received: u64,
    pub frames_sent: u64,
    /// Frames smoltcp produced while the transmit queue was stuck.
    pub frames_dropped: u64,
    /// Used receive entries that were malformed (shorter than the header).
    pub bad_receives: u64,
    /// Received TCP segments with a wrong checksum (checked here, dropped).
    pub bad_checksums: u64,
    /// Large segments handed to the device to cut (TSO).
    pub segments_offloaded: u64,
    pub transmit_notifies: u64,
    pub receive_notifies: u64,
}

/// A fixed set of equal buffers in one heap allocation.
struct BufferPool {
    memory: Box<[u8]>,
    buffer_bytes: usize,
}

impl BufferPool {
    fn new(count: usize, buffer_bytes: usize) -> Self {
        BufferPool {
            memory: alloc::vec![0u8; count * buffer_bytes].into_boxed_slice(),
            buffer_bytes,
        }
    }

    fn count(&self) -> usize {
        self.memory.len() / self.buffer_bytes
    }

    fn slot(&mut self, slot: usize) -> &mut [u8] {
        &mut self.memory[slot * self.buffer_bytes..(slot + 1) * self.buffer_bytes]
    }
}

/// Sums `bytes` as big-endian 16-bit words (RFC 1071), unfolded.
fn sum_words(bytes: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut words = bytes.chunks_exact(2);
    for pair in &mut words {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Where the TCP header of an IPv4/TCP Ethernet frame starts, and the
/// TCP length the pseudo-header names; `None` for anything else.
fn tcp_in_ipv4(frame: &[u8]) -> Option<(usize, usize)> {
    if frame.len() < ETHERNET_HEADER_BYTES + 20 || frame[12..14] != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[ETHERNET_HEADER_BYTES..];
    let ip_header_bytes = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != PROTOCOL_TCP || ip_header_bytes < 20 {
        return None;
    }
    let tcp_start = ETHERNET_HEADER_BYTES + ip_header_bytes;
    // A zero total length means "too long for the field" (segmentation offload).
    let ip_bytes = match usize::from(u16::from_be_bytes([ip[2], ip[3]])) {
        0 => ip.len(),
        total => total.min(ip.len()),
    };
    let tcp_bytes = ip_bytes.checked_sub(ip_header_bytes)?;
    (tcp_bytes >= 20).then_some((tcp_start, tcp_bytes))
}

/// The unfolded sum of the TCP pseudo-header (addresses, protocol, length).
fn pseudo_header_sum(frame: &[u8], tcp_bytes: usize) -> u64 {
    let ip = &frame[ETHERNET_HEADER_BYTES..];
    sum_words(&ip[12..20]) + u64::from(PROTOCOL_TCP) + tcp_bytes as u64
}

/// Whether a received TCP/IPv4 frame's checksum verifies (other frames: true).
fn tcp_checksum_ok(frame: &[u8]) -> bool {
    match tcp_in_ipv4(frame) {
        None => true,
        Some((tcp_start, tcp_bytes)) => {
            let segment = &frame[tcp_start..tcp_start + tcp_bytes];
            fold(pseudo_header_sum(frame, tcp_bytes) + sum_words(segment)) == 0xffff
        }
    }
}

/// The virtio-net header for a frame smoltcp built with the TCP checksum
/// left to the device: seeds the checksum field with the pseudo-header sum
/// (what NEEDS_CSUM expects) and, for a segment longer than
/// `segment_bytes`, asks the device to cut it.
fn transmit_header(frame: &mut [u8], segment_bytes: Option<u16>) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    let Some((tcp_start, tcp_bytes)) = tcp_in_ipv4(frame) else {
        return header;
    };
    let seed = fold(pseudo_header_sum(frame, tcp_bytes));
    let checksum_at = tcp_start + TCP_CHECKSUM_OFFSET;
    frame[checksum_at..checksum_at + 2].copy_from_slice(&seed.to_be_bytes());
    header[0] = NEEDS_CSUM;
    header[6..8].copy_from_slice(&(tcp_start as u16).to_le_bytes());
    header[8..10].copy_from_slice(&(TCP_CHECKSUM_OFFSET as u16).to_le_bytes());
    let tcp_header_bytes = usize::from(frame[tcp_start + 12] >> 4) * 4;
    if let Some(segment_bytes) = segment_bytes {
        if tcp_bytes.saturating_sub(tcp_header_bytes) > usize::from(segment_bytes) {
            header[1] = GSO_TCPV4;
            header[2..4].copy_from_slice(&((tcp_start + tcp_header_bytes) as u16).to_le_bytes());
            header[4..6].copy_from_slice(&segment_bytes.to_le_bytes());
        }
    }
    header
}

/// The receive queue and its buffers.
struct ReceiveRing {
    queue: VirtQueue<KernelHal, QUEUE_SIZE>,
    buffers: BufferPool,
    slot_of_token: [u16; QUEUE_SIZE],
    /// Buffers the device filled since the last receive notify.
    filled_since_notify: usize,
    /// Notify after re-posting once this many were filled (3/4 of them).
    notify_after_filled: usize,
    /// TCP checksums are not checked by smoltcp: check those the device
    /// did not vouch for (no NEEDS_CSUM, no DATA_VALID) here.
    check_unvouched: bool,
}

impl ReceiveRing {
    fn post(&mut self, slot: usize) {
        let buffer = self.buffers.slot(slot);
        // SAFETY: the buffer belongs to this ring and is not touched again
        // until `pop` hands it out after the device returned it.
        let token = unsafe { self.queue.add(&[], &mut [buffer]) }
            .expect("a receive slot always has a free descriptor");
        self.slot_of_token[usize::from(token)] = slot as u16;
    }

    /// The next filled buffer: `(slot, frame_bytes)`; the frame starts after the header.
    fn pop(&mut self, stats: &mut NetStats) -> Option<(usize, usize)> {
        loop {
            let token = self.queue.peek_used()?;
            let slot = usize::from(self.slot_of_token[usize::from(token)]);
            let buffer = self.buffers.slot(slot);
            // SAFETY: `token` was returned by `add` for exactly this buffer.
            let used_bytes = unsafe { self.queue.pop_used(token, &[], &mut [buffer]) }
                .expect("the peeked token is next in the used ring");
            self.filled_since_notify += 1;
            let used_bytes = used_bytes as usize;
            if !(HEADER_BYTES..=self.buffers.buffer_bytes).contains(&used_bytes) {
                stats.bad_receives += 1;
                self.post(slot);
                continue;
            }
            let buffer = &self.buffers.slot(slot)[..used_bytes];
            let vouched = buffer[0] & (NEEDS_CSUM | DATA_VALID) != 0;
            if self.check_unvouched && !vouched && !tcp_checksum_ok(&buffer[HEADER_BYTES..]) {
                stats.bad_checksums += 1;
                self.post(slot);
                continue;
            }
            stats.frames_received += 1;
            return Some((slot, used_bytes - HEADER_BYTES));
        }
    }
}

/// The transmit queue and its buffers.
struct TransmitRing {
    queue: VirtQueue<KernelHal, QUEUE_SIZE>,
    buffers: BufferPool,
    slot_of_token: [u16; QUEUE_SIZE],
    length_of_slot: [u32; QUEUE_SIZE],
    free_slots: Vec<u16>,
    /// Frames queued since the last notify.
    unnotified: usize,
    /// TCP checksums (and, with a segment size, segmentation) go to the device.
    offload: bool,
}

impl TransmitRing {
    /// Notifies the device of queued frames (one exit) and takes back every
    /// buffer it has finished with.
    fn flush(&mut self, transport: &mut MmioTransport<'static>, stats: &mut NetStats) {
        if self.unnotified > 0 {
            if self.queue.should_notify() {
                transport.notify(QUEUE_TRANSMIT);
                stats.transmit_notifies += 1;
            }
            self.unnotified = 0;
        }
        while let Some(token) = self.queue.peek_used() {
            let slot = usize::from(self.slot_of_token[usize::from(token)]);
            let length = self.length_of_slot[slot] as usize;
            let buffer = &self.buffers.slot(slot)[..length];
            // SAFETY: `token` was returned by `add` for exactly this buffer.
            unsafe { self.queue.pop_used(token, &[buffer], &mut []) }
                .expect("the peeked token is next in the used ring");
            self.free_slots.push(slot as u16);
        }
    }

    /// Fills a free buffer with `header + frame` through `fill` and queues
    /// it; `segment_bytes` is smoltcp's request to cut it into segments.
    fn queue_frame<R>(
        &mut self,
        transport: &mut MmioTransport<'static>,
        stats: &mut NetStats,
        frame_bytes: usize,
        segment_bytes: Option<u16>,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        let offload = self.offload;
        let header = |frame: &mut [u8]| match offload {
            true => transmit_header(frame, segment_bytes),
            false => [0; HEADER_BYTES],
        };
        self.queue_with_header(transport, stats, frame_bytes, fill, header)
    }

    /// Queues `fill`'s frame behind the header `header` makes from it.
    fn queue_with_header<R>(
        &mut self,
        transport: &mut MmioTransport<'static>,
        stats: &mut NetStats,
        frame_bytes: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
        header: impl FnOnce(&mut [u8]) -> [u8; HEADER_BYTES],
    ) -> R {
        let buffer_bytes = self.buffers.buffer_bytes;
        assert!(frame_bytes <= buffer_bytes - HEADER_BYTES, "frame of {frame_bytes} bytes");
        if self.free_slots.is_empty() {
            self.flush(transport, stats);
        }
        let Some(slot) = self.free_slots.pop() else {
            // The device kept every buffer: build the frame and drop it.
            stats.frames_dropped += 1;
            let mut scratch = alloc::vec![0u8; frame_bytes];
            return fill(&mut scratch);
        };
        let slot = usize::from(slot);
        let length = HEADER_BYTES + frame_bytes;
        let buffer = &mut self.buffers.slot(slot)[..length];
        let (header_bytes, frame) = buffer.split_at_mut(HEADER_BYTES);
        let result = fill(frame);
        header_bytes.copy_from_slice(&header(frame));
        stats.segments_offloaded += u64::from(header_bytes[1] == GSO_TCPV4);
        self.length_of_slot[slot] = length as u32;
        let buffer = &self.buffers.slot(slot)[..length];
        // SAFETY: the slot was free, so nothing else uses the buffer until the
        // device returns it and `flush` takes it back.
        let token = unsafe { self.queue.add(&[buffer], &mut []) }
            .expect("a free transmit slot always has a free descriptor");
        self.slot_of_token[usize::from(token)] = slot as u16;
        self.unnotified += 1;
        stats.frames_sent += 1;
        result
    }
}

/// The virtio-net device.
pub struct NetDevice {
    transport: MmioTransport<'static>,
    receive: ReceiveRing,
    transmit: TransmitRing,
    mac: [u8; 6],
    features: NetFeatures,
    stats: NetStats,
}

impl NetDevice {
    /// Brings up the NIC at its window. Call only when the boot info lists it.
    pub fn open() -> Result<Box<Self>, VirtioError> {
        let mut transport = open_transport(ftvm_abi::mmio::virtio::NET_BASE, DeviceType::Network)?;
        let negotiated = transport.begin_init(NetFeatures::all());
        if !negotiated.contains(NetFeatures::VERSION_1) {
            transport.set_status(virtio_drivers::transport::DeviceStatus::FAILED);
            return Err(VirtioError::Driver(virtio_drivers::Error::Unsupported));
        }
        let mut mac = [0u8; 6];
        if negotiated.contains(NetFeatures::MAC) {
            for (offset, byte) in mac.iter_mut().enumerate() {
                *byte = transport.read_config_space::<u8>(offset)?;
            }
        }
        let receive_queue = VirtQueue::new(&mut transport, QUEUE_RECEIVE, false, false)?;
        let transmit_queue = VirtQueue::new(&mut transport, QUEUE_TRANSMIT, false, false)?;
        transport.finish_init();

        // Big buffers only when segments larger than a frame can come or go.
        let pool = |large: bool| match large {
            true => BufferPool::new(LARGE_BUFFERS, LARGE_BUFFER_BYTES),
            false => BufferPool::new(QUEUE_SIZE, SMALL_BUFFER_BYTES),
        };
        let receive_buffers = pool(negotiated.contains(NetFeatures::GUEST_TSO4));
        let transmit_buffers = pool(negotiated.contains(NetFeatures::HOST_TSO4));
        let receive_count = receive_buffers.count();
        let transmit_count = transmit_buffers.count() as u16;
        let mut device = Box::new(NetDevice {
            transport,
            receive: ReceiveRing {
                queue: receive_queue,
                buffers: receive_buffers,
                slot_of_token: [0; QUEUE_SIZE],
                filled_since_notify: 0,
                notify_after_filled: receive_count * 3 / 4,
                check_unvouched: negotiated.contains(NetFeatures::GUEST_CSUM),
            },
            transmit: TransmitRing {
                queue: transmit_queue,
                buffers: transmit_buffers,
                slot_of_token: [0; QUEUE_SIZE],
                length_of_slot: [0; QUEUE_SIZE],
                free_slots: (0..transmit_count).rev().collect(),
                unnotified: 0,
                offload: negotiated.contains(NetFeatures::CSUM),
            },
            mac,
            features: negotiated,
            stats: NetStats::default(),
        });
        for slot in 0..receive_count {
            device.receive.post(slot);
        }
        device.transport.notify(QUEUE_RECEIVE);
        Ok(device)
    }

    /// The MAC address from the device's config space (zero if it has none).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Counters since the device came up.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Queues `frame` behind `header` exactly as given, bypassing the
    /// driver's own offload logic (the hostile role sends nonsense headers
    /// with it); [`NetDevice::flush`] sends it.
    pub fn transmit_raw(&mut self, header: [u8; HEADER_BYTES], frame: &[u8]) {
        let fill = |buffer: &mut [u8]| buffer.copy_from_slice(frame);
        let ring = &mut self.transmit;
        ring.queue_with_header(&mut self.transport, &mut self.stats, frame.len(), fill, |_| header);
    }

    /// Hands queued frames to the device (one exit when there are any) and
    /// tells it about re-posted receive buffers if it may have run low.
    pub fn flush(&mut self) {
        self.transmit.flush(&mut self.transport, &mut self.stats);
        let receive = &mut self.receive;
        if receive.filled_since_notify >= receive.notify_after_filled {
            if receive.queue.should_notify() {
                self.transport.notify(QUEUE_RECEIVE);
                self.stats.receive_notifies += 1;
            }
            receive.filled_since_notify = 0;
        }
    }
}

/// A received frame, lent to smoltcp; its buffer is re-posted when dropped.
pub struct RxToken<'a> {
    ring: &'a mut ReceiveRing,
    slot: usize,
    frame_bytes: usize,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let buffer = self.ring.buffers.slot(self.slot);
        f(&buffer[HEADER_BYTES..HEADER_BYTES + self.frame_bytes])
    }
}

impl Drop for RxToken<'_> {
    fn drop(&mut self) {
        self.ring.post(self.slot);
    }
}

/// Permission to queue one frame for transmission.
pub struct TxToken<'a> {
    ring: &'a mut TransmitRing,
    transport: &'a mut MmioTransport<'static>,
    stats: &'a mut NetStats,
    /// The segment size smoltcp asked the device to cut this frame into.
    segment_bytes: Option<u16>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.ring.queue_frame(self.transport, self.stats, len, self.segment_bytes, f)
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.segment_bytes = meta.segmentation_offload_size.map(|size| size.get());
    }
}

impl phy::Device for NetDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let (slot, frame_bytes) = self.receive.pop(&mut self.stats)?;
        Some((
            RxToken { ring: &mut self.receive, slot, frame_bytes },
            TxToken {
                ring: &mut self.transmit,
                transport: &mut self.transport,
                stats: &mut self.stats,
                segment_bytes: None,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        if self.transmit.free_slots.is_empty() {
            self.transmit.flush(&mut self.transport, &mut self.stats);
            if self.transmit.free_slots.is_empty() {
                return None;
            }
        }
        Some(TxToken {
            ring: &mut self.transmit,
            transport: &mut self.transport,
            stats: &mut self.stats,
            segment_bytes: None,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = MAX_FRAME_BYTES;
        // smoltcp neither computes the TCP checksums the device completes
        // (CSUM) nor checks those it vouches for or this driver checks (GUEST_CSUM).
        let tx_offload = self.features.contains(NetFeatures::CSUM);
        let rx_offload = self.features.contains(NetFeatures::GUEST_CSUM);
        capabilities.checksum.tcp = match (tx_offload, rx_offload) {
            (false, false) => Checksum::Both,
            (true, false) => Checksum::Rx,
            (false, true) => Checksum::Tx,
            (true, true) => Checksum::None,
        };
        if tx_offload && self.features.contains(NetFeatures::HOST_TSO4) {
            capabilities.segmentation.tcpv4 = NonZeroUsize::new(TSO_FRAME_BYTES);
        }
        capabilities
    }
}
