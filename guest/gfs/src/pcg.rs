//! A tiny seeded PCG32 generator (O'Neill's XSH-RR variant): the only randomness in this crate.

/// PCG32: 64-bit state, 32-bit output. Deterministic for a given seed and stream.
#[derive(Clone, Debug)]
pub struct Pcg32 {
    state: u64,
    increment: u64,
}

const MULTIPLIER: u64 = 6_364_136_223_846_793_005;

impl Pcg32 {
    /// A generator for `seed` on stream `stream` (different streams give unrelated sequences).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut pcg = Pcg32 { state: 0, increment: (stream << 1) | 1 };
        pcg.next_u32();
        pcg.state = pcg.state.wrapping_add(seed);
        pcg.next_u32();
        pcg
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(MULTIPLIER).wrapping_add(self.increment);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rotation = (old >> 59) as u32;
        xorshifted.rotate_right(rotation)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        (u64::from(self.next_u32()) << 32) | u64::from(self.next_u32())
    }

    /// A uniform value in `0..bound` (`bound` > 0), without modulo bias.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "Pcg32::below needs a positive bound");
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let value = self.next_u64();
            if value < zone {
                return value % bound;
            }
        }
    }

    /// A uniform value in `low..=high`.
    pub fn range_inclusive(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_different_seed_differs() {
        let mut a = Pcg32::new(7, 1);
        let mut b = Pcg32::new(7, 1);
        let mut c = Pcg32::new(8, 1);
        let seq_a: [u32; 4] = core::array::from_fn(|_| a.next_u32());
        let seq_b: [u32; 4] = core::array::from_fn(|_| b.next_u32());
        let seq_c: [u32; 4] = core::array::from_fn(|_| c.next_u32());
        assert_eq!(seq_a, seq_b);
        assert_ne!(seq_a, seq_c);
    }

    #[test]
    fn below_stays_in_bounds_and_hits_every_value() {
        let mut pcg = Pcg32::new(1, 2);
        let mut seen = [false; 5];
        for _ in 0..200 {
            let value = pcg.below(5) as usize;
            seen[value] = true;
        }
        assert!(seen.iter().all(|hit| *hit));
    }
}
