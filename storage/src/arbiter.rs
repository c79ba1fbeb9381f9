//! The test-and-set arbiter (being written).
