//! Shared storage: the file-backed block store a guest's virtio-blk disk
//! lives in ([`block`]), the test-and-set arbiter an FT pair uses to
//! decide who goes live ([`arbiter`]), and the pair's identity kept beside
//! the arbiter's records ([`pair`]).

pub mod arbiter;
pub mod block;
pub mod pair;

pub use block::{BlockStore, BlockStoreError, SECTOR_BYTES, TRACKED_BLOCK_BYTES};
