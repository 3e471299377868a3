//! A thread-safe handle on an NCCL communicator (feature `nccl`).
//!
//! cudarc's `Comm` holds a raw `ncclComm_t`, so it is neither `Send` nor `Sync`; a training
//! rank keeps its communicator inside autograd ops and a trainer that moves between threads.
//! [`SharedComm`] makes that possible by serialising every call through a mutex, and lets
//! another thread abort the communicator (`ncclCommAbort`) when a rank of its group fails.
#![allow(unsafe_code)]

use candle_core::cuda_backend::cudarc::nccl::safe::Comm;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// An NCCL communicator that may be shared between threads; calls on it never overlap.
#[derive(Debug)]
pub struct SharedComm(Mutex<Option<Comm>>);

// SAFETY: `Comm` is a raw NCCL communicator plus an `Arc<CudaStream>` (itself `Send + Sync`).
// NCCL lets any thread use a communicator provided calls on it are not concurrent; the only
// accesses are `SharedComm::with` and `SharedComm::abort`, which hold the mutex for the whole
// call.
unsafe impl Send for SharedComm {}
// SAFETY: as above — a shared reference reaches the communicator only through the mutex.
unsafe impl Sync for SharedComm {}

/// What [`SharedComm::abort`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    /// The communicator was aborted now.
    Aborted,
    /// It had been aborted before.
    AlreadyAborted,
    /// Another thread held it past the deadline (a call into NCCL that does not return); it
    /// was left alone.
    Busy,
    /// `ncclCommAbort` failed.
    Failed,
}

impl SharedComm {
    /// Wraps `comm`.
    pub fn new(comm: Comm) -> Self {
        Self(Mutex::new(Some(comm)))
    }

    /// Runs `f` on the communicator, with no other call in flight; `None` once it has been
    /// aborted.
    pub fn with<R>(&self, f: impl FnOnce(&Comm) -> R) -> Option<R> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(f)
    }

    /// Aborts the communicator (`ncclCommAbort`, through cudarc's `Drop`): operations still
    /// running on the device for it end, so a thread waiting on its stream for a collective
    /// that a failed rank will never join returns. Later [`SharedComm::with`] calls get `None`.
    /// Waits at most `patience` for a call in flight on another thread to let go.
    pub fn abort(&self, patience: Duration) -> Abort {
        let deadline = Instant::now() + patience;
        let mut guard = loop {
            match self.0.try_lock() {
                Ok(g) => break g,
                Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TryLockError::WouldBlock) => return Abort::Busy,
            }
        };
        let Some(comm) = guard.take() else {
            return Abort::AlreadyAborted;
        };
        // cudarc's `Drop` calls `ncclCommAbort` and panics if it fails.
        match catch_unwind(AssertUnwindSafe(move || drop(comm))) {
            Ok(()) => Abort::Aborted,
            Err(_) => Abort::Failed,
        }
    }
}
