//! Log entries and the primary -> backup log channel (framing, acks, progress).
