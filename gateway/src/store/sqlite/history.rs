//! A request's history (`request_events`) and what a batch's commands did besides their rows
//! ([`Effects`]): shared by every command's statements ([`super::requests`], [`super::cancel`],
//! [`super::followup`]).

use crate::store::changes::Change;
use crate::store::error::StoreError;
use crate::store::model::*;
use rusqlite::{params, Connection};
use yijian_wire::{FeedbackState, Service};

/// What one batch's commands did besides their rows: applied to the gauges and published on
/// the change feed only once the batch is committed.
#[derive(Default)]
pub(super) struct Effects {
    /// Open-request count changes: (service, from, to).
    pub deltas: Vec<(Service, Option<RequestState>, Option<RequestState>)>,
    /// Transitions for the change feed, in order.
    pub changes: Vec<Change>,
}

impl Effects {
    /// Where a command's effects begin, so a command rolled back to its savepoint leaves none.
    pub fn mark(&self) -> (usize, usize) {
        (self.deltas.len(), self.changes.len())
    }

    /// Forget what was recorded since `mark`.
    pub fn rollback(&mut self, mark: (usize, usize)) {
        self.deltas.truncate(mark.0);
        self.changes.truncate(mark.1);
    }
}

/// Append to a request's history; returns the entry's `seq`.
pub(super) fn event(
    c: &Connection,
    request_id: &str,
    at: i64,
    kind: &str,
    state: Option<RequestState>,
    detail: Option<serde_json::Value>,
) -> Result<i64, StoreError> {
    c.prepare_cached(
        "INSERT INTO request_events (request_id, at, kind, state, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![request_id, at, kind, state.map(|s| s.as_str()), detail.map(|d| d.to_string())])?;
    Ok(c.last_insert_rowid())
}

pub(super) fn nothing_to_cancel(device_id: &str, press_id: &str) -> Notice {
    Notice {
        device_id: device_id.to_owned(),
        press_id: Some(press_id.to_owned()),
        request_id: None,
        service: None,
        state: FeedbackState::Cancelled,
        reference: None,
        eta_s: None,
        reason: Some("no open request to cancel".into()),
    }
}
