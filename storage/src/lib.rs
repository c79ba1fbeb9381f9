//! Shared storage: the file-backed block store and the test-and-set arbiter.
