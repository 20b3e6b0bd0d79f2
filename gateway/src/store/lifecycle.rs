//! The request lifecycle as plain Rust: which transitions are allowed, what a cancel press does,
//! when a press joins an open request, who is owed a cancellation. No I/O: every engine (SQLite
//! today, PostgreSQL next) reads the request's current state, asks here, and writes what these
//! functions decide, so the rules cannot drift apart between engines.
//!
//! ```text
//!             ┌── backend accepts ──▶ dispatched ──▶ en_route ──▶ arrived ──┐
//!  received ──┤                          (callbacks, from the owning backend) ├──▶ closed
//!             └── deadline / 4xx ──▶ escalated ── operator ack ──▶ acknowledged ┘    cancelled
//! ```
//! Any open request can be closed or cancelled by an operator; a resident's cancel press ends
//! it too, except a rescue already on its way (it is flagged for an operator instead).

use super::model::RequestState;
use crate::config::DESK;
use yijian_wire::Service;

/// Which time column a transition stamps (the first time only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// `acked_at`: an operator took it.
    Acknowledged,
    /// `closed_at`: it ended, closed or cancelled.
    Closed,
}

/// One allowed step: the new state, the column it stamps, the history's event kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The state after.
    pub to: RequestState,
    /// The time column to stamp, if any.
    pub stamp: Option<Stamp>,
    /// The event kind written to the history and published on the change feed.
    pub kind: &'static str,
}

/// What to do when a backend accepted a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAccepted {
    /// It was waiting: it is now dispatched.
    Dispatch,
    /// It ended or went to the desk meanwhile; record the late acceptance. `call_off`: it was
    /// cancelled, so the backend that took it after all is owed a cancellation.
    Late {
        /// Tell that backend to drop it.
        call_off: bool,
    },
}

/// A backend accepted the request, which is now in `state`.
pub fn on_accepted(state: RequestState) -> OnAccepted {
    match state {
        RequestState::Received => OnAccepted::Dispatch,
        RequestState::Cancelled => OnAccepted::Late { call_off: true },
        _ => OnAccepted::Late { call_off: false },
    }
}

/// Only a request still waiting for a backend goes to the desk; one that was dispatched,
/// ended or already escalated meanwhile stays as it is.
pub fn may_escalate(state: RequestState) -> bool {
    state == RequestState::Received
}

/// What an operator's action does to a request in `state`, or the conflict.
pub fn operator(action: super::OperatorAction, state: RequestState) -> Result<Step, RequestState> {
    use super::OperatorAction::*;
    match action {
        Ack if state == RequestState::Escalated => Ok(Step {
            to: RequestState::Acknowledged,
            stamp: Some(Stamp::Acknowledged),
            kind: "acknowledged",
        }),
        Close if state.is_open() => Ok(Step {
            to: RequestState::Closed,
            stamp: Some(Stamp::Closed),
            kind: "closed",
        }),
        Cancel if state.is_open() => Ok(Step {
            to: RequestState::Cancelled,
            stamp: Some(Stamp::Closed),
            kind: "cancelled",
        }),
        _ => Err(state),
    }
}

/// Why a backend's callback is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackRefusal {
    /// The caller is not the backend the request was dispatched to.
    Forbidden,
    /// The request is not in a state a backend reports on, or `to` is not a state a backend
    /// may report.
    Conflict(RequestState),
}

/// A backend (`caller`, when authenticated as one) reports `to` on a request in `state` that
/// `owner` accepted. Only the owner may report; before any backend has it (`received`) the
/// state check answers with a conflict.
pub fn callback(
    caller: Option<&str>,
    owner: Option<&str>,
    state: RequestState,
    to: RequestState,
) -> Result<Step, CallbackRefusal> {
    if let (Some(caller), Some(owner)) = (caller, owner) {
        if caller != owner {
            return Err(CallbackRefusal::Forbidden);
        }
    }
    let reporting = matches!(
        state,
        RequestState::Dispatched | RequestState::EnRoute | RequestState::Arrived
    );
    let reportable = matches!(
        to,
        RequestState::EnRoute
            | RequestState::Arrived
            | RequestState::Closed
            | RequestState::Cancelled
    );
    if !(reporting && reportable) {
        return Err(CallbackRefusal::Conflict(state));
    }
    Ok(Step {
        to,
        stamp: (!to.is_open()).then_some(Stamp::Closed),
        kind: "callback",
    })
}

/// What a resident's cancel press does to their open request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelPress {
    /// It is cancelled.
    Cancel,
    /// A rescue already on its way is never called off by a button alone: the request stays
    /// open, flagged (`cancel_requested_at`) for an operator to confirm by phone.
    Flag,
}

/// A cancel press on the device's open request of `service` in `state`.
pub fn cancel_press(service: Service, state: RequestState) -> CancelPress {
    if service == Service::Rescue && matches!(state, RequestState::EnRoute | RequestState::Arrived)
    {
        CancelPress::Flag
    } else {
        CancelPress::Cancel
    }
}

/// The earliest `created_at` of a request that a cancel press at `at` may still cancel: the
/// window includes its last millisecond and not one more.
pub fn cancel_window_start(at: i64, window_ms: i64) -> i64 {
    at - window_ms
}

/// A request just left `from` for `cancelled`: the HTTP backend that had accepted it is owed a
/// cancellation. A request still being dispatched has no accepting backend yet (should an
/// attempt in flight be accepted after all, [`on_accepted`] says so then); the desk is not HTTP.
pub fn owes_cancellation(from: RequestState, backend: Option<&str>) -> Option<&str> {
    let accepted = matches!(
        from,
        RequestState::Dispatched | RequestState::EnRoute | RequestState::Arrived
    );
    match backend {
        Some(b) if accepted && b != DESK => Some(b),
        _ => None,
    }
}

/// Flood control: the earliest `created_at` of an open request of the same service that a new
/// press joins instead of opening a second one (`None`: joining is off).
pub fn attach_window_start(at: i64, attach_window_ms: i64) -> Option<i64> {
    (attach_window_ms > 0).then(|| at - attach_window_ms)
}

/// The press count a "pressed again" event records: the first press plus every earlier
/// pressed-again event plus this one.
pub fn pressed_again_count(earlier_pressed_again: u32) -> u32 {
    earlier_pressed_again + 2
}

/// Whether the backend holding a request hears of a press joining it (the update call): an
/// HTTP backend does; the desk shows it in the history.
pub fn tells_backend_of_press(backend: Option<&str>) -> Option<&str> {
    backend.filter(|b| *b != DESK)
}

#[cfg(test)]
mod tests {
    use super::super::OperatorAction;
    use super::*;
    use RequestState::*;

    #[test]
    fn only_a_waiting_request_is_dispatched_or_escalated() {
        assert_eq!(on_accepted(Received), OnAccepted::Dispatch);
        assert_eq!(on_accepted(Cancelled), OnAccepted::Late { call_off: true });
        for s in [
            Dispatched,
            EnRoute,
            Arrived,
            Escalated,
            Acknowledged,
            Closed,
        ] {
            assert_eq!(on_accepted(s), OnAccepted::Late { call_off: false }, "{s}");
        }
        for s in RequestState::ALL {
            assert_eq!(may_escalate(*s), *s == Received, "{s}");
        }
    }

    #[test]
    fn operators_ack_only_escalated_and_end_only_open_requests() {
        let ack = operator(OperatorAction::Ack, Escalated).expect("ack an escalated request");
        assert_eq!(
            (ack.to, ack.stamp, ack.kind),
            (Acknowledged, Some(Stamp::Acknowledged), "acknowledged")
        );
        for s in RequestState::ALL
            .iter()
            .copied()
            .filter(|s| *s != Escalated)
        {
            assert_eq!(operator(OperatorAction::Ack, s), Err(s));
        }
        for s in RequestState::ALL {
            let close = operator(OperatorAction::Close, *s);
            let cancel = operator(OperatorAction::Cancel, *s);
            if s.is_open() {
                assert_eq!(close.map(|x| (x.to, x.kind)), Ok((Closed, "closed")));
                assert_eq!(cancel.map(|x| (x.to, x.kind)), Ok((Cancelled, "cancelled")));
            } else {
                assert_eq!(close, Err(*s));
                assert_eq!(cancel, Err(*s));
            }
        }
    }

    #[test]
    fn callbacks_come_from_the_owner_about_a_dispatched_request() {
        assert_eq!(
            callback(Some("b"), Some("a"), Dispatched, EnRoute),
            Err(CallbackRefusal::Forbidden)
        );
        assert_eq!(
            callback(Some("a"), None, Received, EnRoute),
            Err(CallbackRefusal::Conflict(Received))
        );
        let ok = callback(Some("a"), Some("a"), Dispatched, EnRoute).expect("owner reports");
        assert_eq!((ok.to, ok.stamp), (EnRoute, None));
        let end = callback(None, Some("a"), Arrived, Closed).expect("admin reports");
        assert_eq!(end.stamp, Some(Stamp::Closed));
        for to in [Received, Dispatched, Escalated, Acknowledged] {
            assert_eq!(
                callback(None, Some("a"), Dispatched, to),
                Err(CallbackRefusal::Conflict(Dispatched)),
                "{to} is not reportable"
            );
        }
        for from in [Received, Escalated, Acknowledged, Closed, Cancelled] {
            assert!(callback(None, None, from, EnRoute).is_err(), "{from}");
        }
    }

    #[test]
    fn a_rescue_on_its_way_is_flagged_not_cancelled() {
        assert_eq!(cancel_press(Service::Rescue, EnRoute), CancelPress::Flag);
        assert_eq!(cancel_press(Service::Rescue, Arrived), CancelPress::Flag);
        assert_eq!(
            cancel_press(Service::Rescue, Dispatched),
            CancelPress::Cancel
        );
        assert_eq!(cancel_press(Service::Taxi, EnRoute), CancelPress::Cancel);
        assert_eq!(cancel_window_start(1_000_000, 120_000), 880_000);
    }

    #[test]
    fn only_an_http_backend_that_accepted_is_owed_a_cancellation() {
        assert_eq!(
            owes_cancellation(Dispatched, Some("taxi-a")),
            Some("taxi-a")
        );
        assert_eq!(owes_cancellation(EnRoute, Some("taxi-a")), Some("taxi-a"));
        assert_eq!(owes_cancellation(Received, Some("taxi-a")), None);
        assert_eq!(owes_cancellation(Escalated, Some(DESK)), None);
        assert_eq!(owes_cancellation(Dispatched, Some(DESK)), None);
        assert_eq!(owes_cancellation(Dispatched, None), None);
    }

    #[test]
    fn pressing_again_joins_within_the_window_and_counts_every_press() {
        assert_eq!(attach_window_start(10_000, 0), None);
        assert_eq!(
            attach_window_start(10_000, 1_800_000),
            Some(10_000 - 1_800_000)
        );
        assert_eq!(pressed_again_count(0), 2);
        assert_eq!(pressed_again_count(3), 5);
        assert_eq!(tells_backend_of_press(Some(DESK)), None);
        assert_eq!(tells_backend_of_press(Some("rescue-a")), Some("rescue-a"));
        assert_eq!(tells_backend_of_press(None), None);
    }
}
