//! Synchronisation primitives that live in the shared mapping: the robust
//! process-shared mutex and futex-word conditions.

pub mod futex;
pub mod mutex;
