//! Shared storage: the file-backed block store a guest's virtio-blk disk
//! lives in ([`block`]), and the test-and-set arbiter an FT pair uses to
//! decide who goes live ([`arbiter`]).

pub mod arbiter;
pub mod block;

pub use block::{BlockStore, BlockStoreError, SECTOR_BYTES};
