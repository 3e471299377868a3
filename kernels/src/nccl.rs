//! A thread-safe handle on an NCCL communicator (feature `nccl`).
//!
//! cudarc's `Comm` holds a raw `ncclComm_t`, so it is neither `Send` nor `Sync`; a training
//! rank keeps its communicator inside autograd ops and a trainer that moves between threads.
//! [`SharedComm`] makes that possible by serialising every call through a mutex.
#![allow(unsafe_code)]

use candle_core::cuda_backend::cudarc::nccl::safe::Comm;
use std::sync::{Mutex, PoisonError};

/// An NCCL communicator that may be shared between threads; calls on it never overlap.
#[derive(Debug)]
pub struct SharedComm(Mutex<Comm>);

// SAFETY: `Comm` is a raw NCCL communicator plus an `Arc<CudaStream>` (itself `Send + Sync`).
// NCCL lets any thread use a communicator provided calls on it are not concurrent; the only
// access is `SharedComm::with`, which holds the mutex for the whole call.
unsafe impl Send for SharedComm {}
// SAFETY: as above — a shared reference reaches the communicator only through the mutex.
unsafe impl Sync for SharedComm {}

impl SharedComm {
    /// Wraps `comm`.
    pub fn new(comm: Comm) -> Self {
        Self(Mutex::new(comm))
    }

    /// Runs `f` on the communicator, with no other call in flight.
    pub fn with<R>(&self, f: impl FnOnce(&Comm) -> R) -> R {
        f(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
