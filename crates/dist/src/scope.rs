//! The synchronized-batch-norm scope: while a [`SyncBatchNormScope`] lives on a thread, every
//! batch norm in training mode on that thread normalizes over the whole group's batch. A failed
//! collective inside a forward pass (which cannot return an error) is recorded here and taken by
//! the training loop right after the step.

use crate::group::ProcessGroup;
use rustworthy_core::Error;
use std::cell::RefCell;

thread_local! {
    static ACTIVE: RefCell<Option<ProcessGroup>> = const { RefCell::new(None) };
    static FAILURE: RefCell<Option<Error>> = const { RefCell::new(None) };
}

/// Turns synchronized batch norm on for this thread until dropped (the previous state is then
/// restored).
pub struct SyncBatchNormScope {
    previous: Option<ProcessGroup>,
}

impl SyncBatchNormScope {
    /// Synchronizes batch norm over `group` (a world of one keeps libtorch's batch norm).
    pub fn enter(group: &ProcessGroup) -> SyncBatchNormScope {
        let previous = ACTIVE.with(|a| a.replace(Some(group.clone())));
        SyncBatchNormScope { previous }
    }
}

impl Drop for SyncBatchNormScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        ACTIVE.with(|a| *a.borrow_mut() = previous);
    }
}

/// The group batch norm synchronizes over on this thread, if any (and if larger than one).
pub fn sync_batch_norm_group() -> Option<ProcessGroup> {
    ACTIVE.with(|a| a.borrow().clone().filter(|g| g.world_size() > 1))
}

/// Records a collective failure that happened where no error could be returned (the first one
/// is kept).
pub fn record_failure(e: Error) {
    FAILURE.with(|f| {
        let mut f = f.borrow_mut();
        if f.is_none() {
            *f = Some(e);
        }
    });
}

/// Takes the recorded failure, if any.
pub fn take_failure() -> Option<Error> {
    FAILURE.with(|f| f.borrow_mut().take())
}
