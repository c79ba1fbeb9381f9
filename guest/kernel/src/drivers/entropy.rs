//! Entropy device: random bytes from the host, logged on record.
use ftvm_abi::mmio::entropy;

/// Eight random bytes.
pub fn random_u64() -> u64 {
    super::read(entropy::BASE, entropy::RANDOM_U64)
}

/// Fills `buf` with random bytes, one exit per 64 KiB.
pub fn fill(buf: &mut [u8]) {
    for chunk in buf.chunks_mut(ftvm_abi::buf::MAX_LEN) {
        let descriptor = ftvm_abi::buf::pack(chunk.as_ptr() as u64, chunk.len())
            .expect("kernel buffers live below 2^48");
        super::write(entropy::BASE, entropy::FILL, descriptor);
    }
}

/// The entropy device as a source of randomness for code that takes it through an interface
/// (the mesh core).
pub struct KernelEntropy;

impl mesh::Entropy for KernelEntropy {
    fn random_u64(&mut self) -> u64 {
        random_u64()
    }
}
