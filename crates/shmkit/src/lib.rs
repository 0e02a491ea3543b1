//! shmkit: shared memory IPC between processes on one Linux machine.
//!
//! Layers, each importing only from the ones above it in this list:
//!
//! - [`sys`]: the only module that talks to the OS (shm files, `mmap`,
//!   `flock`, futex, pid liveness).
//! - [`segment`]: named shared memory segments with a validated header,
//!   crash-safe attach tracking and three ways to delete.
//! - [`sync`]: process-shared primitives that live inside a segment.
//! - [`channel`]: ring buffers and zero-copy publish/subscribe.
//! - [`sysv`]: System V segments (`shmget`/`shmat`) of legacy programs.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub(crate) mod primitive;

#[cfg(feature = "async")]
pub mod aio;
pub mod channel;
pub mod segment;
pub mod sync;
pub mod sys;
pub mod sysv;
