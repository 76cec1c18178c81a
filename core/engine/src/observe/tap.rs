//! The live tap: request records streamed to whoever listens.
//!
//! Placeholder until the tap hub lands: nobody can listen yet.

use std::sync::Arc;

use super::Record;

/// The engine's tap hub.
#[derive(Debug, Default)]
pub(crate) struct Tap {}

impl Tap {
    /// Whether anyone listens; when nobody does, no record is made for the tap.
    #[inline]
    pub(crate) fn active(&self) -> bool {
        false
    }

    pub(crate) fn publish(&self, _record: &Arc<Record>) {}
}
