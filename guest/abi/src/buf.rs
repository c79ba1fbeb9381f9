//! Packed buffer descriptors: a guest buffer named in one 64-bit register write,
//! so a console line or an entropy fill costs one exit instead of three.
//!
//! Bits 0..48 hold the guest-physical address, bits 48..64 the length.

/// The longest buffer one descriptor can name.
pub const MAX_LEN: usize = 0xffff;
const ADDR_BITS: u32 = 48;
const ADDR_MASK: u64 = (1 << ADDR_BITS) - 1;

/// Packs `addr` and `len`, or `None` when either does not fit.
pub const fn pack(addr: u64, len: usize) -> Option<u64> {
    if addr > ADDR_MASK || len > MAX_LEN {
        return None;
    }
    Some(addr | ((len as u64) << ADDR_BITS))
}

/// Splits a descriptor into `(addr, len)`. Every 64-bit value decodes; the
/// device still validates the range against guest RAM.
pub const fn unpack(value: u64) -> (u64, usize) {
    (value & ADDR_MASK, (value >> ADDR_BITS) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        assert_eq!(unpack(pack(0x1234_5678, 77).unwrap()), (0x1234_5678, 77));
        assert_eq!(unpack(pack(ADDR_MASK, MAX_LEN).unwrap()), (ADDR_MASK, MAX_LEN));
        assert_eq!(pack(ADDR_MASK + 1, 1), None);
        assert_eq!(pack(0, MAX_LEN + 1), None);
    }
}
