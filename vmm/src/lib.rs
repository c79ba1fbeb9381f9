//! The ftvm VMM.
