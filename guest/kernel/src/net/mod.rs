//! The guest network stack: smoltcp (Ethernet, ARP, IPv4, ICMP echo, TCP) over
//! the virtio-net device, configured from the command line
//! (`ip=10.10.0.2/24 gw=10.10.0.1 mac=52:54:00:12:34:56`; `gw` and `mac` are
//! optional, the MAC defaults to the device's). When the NIC comes up the
//! guest announces its MAC with a gratuitous ARP, as real OSes do, so
//! switches learn its port at once (e.g. a pair restarted on swapped hosts).
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device, TxToken};
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr,
};

use crate::cmdline::Cmdline;
use crate::drivers::virtio::net::NetDevice;
use crate::drivers::{clock, entropy};
use ftvm_abi::boot::{device, BootInfo};

pub mod listeners;
pub mod service;

/// Why the network could not be brought up.
pub enum NetError {
    /// A command-line value is missing or unusable; the message says which.
    BadCmdline(String),
    /// The device is absent or failed to initialise; the message says why.
    Device(String),
}

/// The addresses the interface uses.
pub struct NetConfig {
    pub address: Ipv4Cidr,
    pub gateway: Option<Ipv4Address>,
    pub mac_override: Option<EthernetAddress>,
}

impl NetConfig {
    /// Reads `ip=`, `gw=` and `mac=` from the command line.
    pub fn from_cmdline(args: &Cmdline) -> Result<Self, NetError> {
        let bad = |message: String| NetError::BadCmdline(message);
        let address = match args.get("ip") {
            None => return Err(bad("missing ip=ADDRESS/PREFIX (e.g. ip=10.10.0.2/24)".into())),
            Some(text) => text.parse::<Ipv4Cidr>().map_err(|()| {
                bad(alloc::format!("ip={text}: expected ADDRESS/PREFIX such as 10.10.0.2/24"))
            })?,
        };
        let gateway = match args.get("gw") {
            None => None,
            Some(text) => Some(text.parse::<Ipv4Address>().map_err(|_| {
                bad(alloc::format!("gw={text}: expected an IPv4 address such as 10.10.0.1"))
            })?),
        };
        let mac_override = match args.get("mac") {
            None => None,
            Some(text) => {
                let mac = text.parse::<EthernetAddress>().map_err(|()| {
                    bad(alloc::format!(
                        "mac={text}: expected six hex bytes such as 52:54:00:12:34:56"
                    ))
                })?;
                if !mac.is_unicast() {
                    return Err(bad(alloc::format!("mac={text}: not a unicast address")));
                }
                Some(mac)
            }
        };
        Ok(NetConfig { address, gateway, mac_override })
    }
}

/// The NIC, the smoltcp interface over it, and the sockets of the running service.
pub struct Network {
    pub device: Box<NetDevice>,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    /// The MAC the interface answers to.
    pub mac: EthernetAddress,
}

/// smoltcp time from monotonic nanoseconds.
pub fn instant_from_ns(monotonic_ns: u64) -> Instant {
    Instant::from_micros((monotonic_ns / 1000) as i64)
}

impl Network {
    /// Brings up the NIC and configures the interface from the command line.
    pub fn open(info: &BootInfo, args: &Cmdline) -> Result<Self, NetError> {
        let config = NetConfig::from_cmdline(args)?;
        if info.devices & device::NET == 0 {
            return Err(NetError::Device(
                "no network device: start the VM with --net tap=NAME".into(),
            ));
        }
        let mut device = NetDevice::open()
            .map_err(|error| NetError::Device(alloc::format!("virtio-net: {error}")))?;
        let mac = match config.mac_override {
            Some(mac) => mac,
            None => EthernetAddress(device.mac()),
        };
        if !mac.is_unicast() {
            return Err(NetError::Device(alloc::format!(
                "the device's MAC {mac} is not a unicast address: give mac=..."
            )));
        }
        let mut iface_config = Config::new(HardwareAddress::Ethernet(mac));
        // TCP initial sequence numbers and other choices derive from this seed.
        iface_config.random_seed = entropy::random_u64();
        let now = instant_from_ns(clock::monotonic_ns());
        let mut iface = Interface::new(iface_config, &mut *device, now);
        iface.update_ip_addrs(|addresses| {
            addresses.push(IpCidr::Ipv4(config.address)).expect("room for one address");
        });
        if let Some(gateway) = config.gateway {
            iface.routes_mut().add_default_ipv4_route(gateway).map_err(|_| {
                NetError::BadCmdline(alloc::format!("gw={gateway}: the route table is full"))
            })?;
        }
        announce(&mut device, mac, config.address.address(), now);
        Ok(Network { device, iface, sockets: SocketSet::new(Vec::new()), mac })
    }

    /// The interface's IPv4 address and prefix.
    pub fn address(&self) -> Option<Ipv4Cidr> {
        self.iface.ip_addrs().iter().find_map(|cidr| match cidr {
            IpCidr::Ipv4(cidr) => Some(*cidr),
            IpCidr::Ipv6(_) => None,
        })
    }
}

/// Sends a gratuitous ARP (a broadcast request for our own address, from our
/// own MAC): switches learn where `mac` is, neighbours refresh their caches.
fn announce(device: &mut NetDevice, mac: EthernetAddress, ip: Ipv4Address, now: Instant) {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: ip,
    };
    let ethernet = EthernetRepr {
        src_addr: mac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let Some(token) = device.transmit(now) else {
        return;
    };
    token.consume(ethernet.buffer_len() + arp.buffer_len(), |buffer| {
        let mut frame = EthernetFrame::new_unchecked(buffer);
        ethernet.emit(&mut frame);
        arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    });
}
