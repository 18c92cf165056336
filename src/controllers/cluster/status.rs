//! Status step of the cluster controller: what a reconcile's outcome means for the `Paused` and
//! `Ready` conditions and the event it raises (pure, tested below), and the status write of a
//! blocked deletion. The write itself is [`crate::controllers::status::write`].

use std::time::Duration;

use kube::Resource;
use kube::runtime::events::EventType;

use crate::api::cluster::{
    NetworkStatusWithSubnets, OpenStackWorkerCluster, OpenStackWorkerClusterSpec,
    OpenStackWorkerClusterStatus,
};
use crate::api::conditions::{self, reasons};
use crate::controllers::{Context, Error, status};

/// A non-error outcome of a reconcile: the `Ready` condition it implies and when to look again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `Ready` is true.
    pub ready: bool,
    /// The `Ready` reason (one of [`reasons`]).
    pub reason: &'static str,
    /// The `Ready` message, a sentence.
    pub message: String,
    /// When to reconcile again without a change; `None`: on the next change only.
    pub requeue: Option<Duration>,
}

impl Outcome {
    /// Not ready, for `reason`.
    pub fn waiting(reason: &'static str, message: impl Into<String>) -> Outcome {
        Outcome {
            ready: false,
            reason,
            message: message.into(),
            requeue: None,
        }
    }
}

/// The `Ready` message of a provisioned cluster: its network and subnet count, and whether the
/// control-plane provider has still to set `spec.controlPlaneEndpoint`.
pub fn ready_message(
    network: &NetworkStatusWithSubnets,
    spec: &OpenStackWorkerClusterSpec,
) -> String {
    format!(
        "network {} with {} subnet(s){}",
        network.id,
        network.subnets.len(),
        if spec
            .control_plane_endpoint
            .as_ref()
            .is_some_and(|e| !e.host.is_empty())
        {
            ""
        } else {
            "; waiting for the control-plane provider to set spec.controlPlaneEndpoint"
        }
    )
}

/// Sets the `Paused` condition (true when `reason` is [`reasons::PAUSED`]) and, unless paused,
/// the `Ready` condition (`ready`, `reason`, `message`) of `status`, both at `generation`, and
/// `status.observedGeneration`. A paused object keeps its last `Ready` condition.
pub fn set_conditions(
    status: &mut OpenStackWorkerClusterStatus,
    ready: bool,
    reason: &'static str,
    message: &str,
    generation: Option<i64>,
) {
    let paused = reason == reasons::PAUSED;
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::PAUSED,
            paused,
            if paused {
                reasons::PAUSED
            } else {
                reasons::NOT_PAUSED
            },
            "",
            generation,
        ),
    );
    if !paused {
        conditions::set_condition(
            &mut status.conditions,
            conditions::condition(conditions::READY, ready, reason, message, generation),
        );
    }
    status.observed_generation = generation;
}

/// The event a reconcile raises: a Warning on every failure (`failed`), a Normal one when the
/// `Ready` reason changed from `previous`, none otherwise.
pub fn event_type(previous: Option<&str>, reason: &str, failed: bool) -> Option<EventType> {
    if failed {
        Some(EventType::Warning)
    } else if previous != Some(reason) {
        Some(EventType::Normal)
    } else {
        None
    }
}

/// The earlier of two requeue delays (`None`: no requeue of that part).
pub fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Writes why a deletion step failed into the `Ready` condition (with an event), so that a
/// cluster held by its finalizer says why; passes the error through.
pub async fn report_delete(ctx: &Context, c: &OpenStackWorkerCluster, e: Error) -> Error {
    let before = c.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let message = format!(
        "deletion is blocked: {e}; capow retries and keeps the finalizer until it succeeds"
    );
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::READY,
            false,
            reasons::DELETING,
            message.clone(),
            c.meta().generation,
        ),
    );
    if let Err(write) = status::write(ctx, c, &before, &status).await {
        tracing::warn!(error = %write, "Failed to write status while deleting");
    }
    ctx.event(
        &c.object_ref(&()),
        EventType::Warning,
        e.reason(),
        "Delete",
        message,
    )
    .await;
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cluster::{ApiEndpoint, SubnetStatus};

    fn condition<'a>(
        s: &'a OpenStackWorkerClusterStatus,
        type_: &str,
    ) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        s.conditions.iter().find(|c| c.type_ == type_)
    }

    #[test]
    fn a_ready_outcome_sets_ready_and_not_paused() {
        let mut s = OpenStackWorkerClusterStatus::default();
        set_conditions(&mut s, true, reasons::READY, "network n", Some(3));
        let ready = condition(&s, conditions::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", reasons::READY)
        );
        assert_eq!(ready.message, "network n");
        let paused = condition(&s, conditions::PAUSED).unwrap();
        assert_eq!(
            (paused.status.as_str(), paused.reason.as_str()),
            ("False", reasons::NOT_PAUSED)
        );
        assert_eq!(s.observed_generation, Some(3));
    }

    #[test]
    fn pausing_keeps_the_last_ready_condition() {
        let mut s = OpenStackWorkerClusterStatus::default();
        set_conditions(&mut s, true, reasons::READY, "network n", Some(1));
        set_conditions(&mut s, false, reasons::PAUSED, "paused", Some(2));
        let ready = condition(&s, conditions::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", reasons::READY)
        );
        let paused = condition(&s, conditions::PAUSED).unwrap();
        assert_eq!(
            (paused.status.as_str(), paused.reason.as_str()),
            ("True", reasons::PAUSED)
        );
    }

    #[test]
    fn failures_always_raise_a_warning_and_changes_a_normal_event() {
        assert_eq!(
            event_type(Some(reasons::READY), reasons::READY, true),
            Some(EventType::Warning)
        );
        assert_eq!(
            event_type(None, reasons::READY, false),
            Some(EventType::Normal)
        );
        assert_eq!(
            event_type(Some(reasons::WAITING_FOR_OWNER), reasons::READY, false),
            Some(EventType::Normal)
        );
        assert_eq!(
            event_type(Some(reasons::READY), reasons::READY, false),
            None
        );
    }

    #[test]
    fn the_earlier_requeue_wins() {
        let s = Duration::from_secs;
        assert_eq!(earliest(Some(s(5)), Some(s(3))), Some(s(3)));
        assert_eq!(earliest(None, Some(s(3))), Some(s(3)));
        assert_eq!(earliest(Some(s(5)), None), Some(s(5)));
        assert_eq!(earliest(None, None), None);
    }

    #[test]
    fn the_ready_message_says_what_the_control_plane_provider_still_owes() {
        let network = NetworkStatusWithSubnets {
            id: "net-1".into(),
            subnets: vec![SubnetStatus::default()],
            ..NetworkStatusWithSubnets::default()
        };
        let mut spec = OpenStackWorkerClusterSpec::default();
        assert_eq!(
            ready_message(&network, &spec),
            "network net-1 with 1 subnet(s); waiting for the control-plane provider to set spec.controlPlaneEndpoint"
        );
        spec.control_plane_endpoint = Some(ApiEndpoint {
            host: "cp.example".into(),
            port: 6443,
        });
        assert_eq!(
            ready_message(&network, &spec),
            "network net-1 with 1 subnet(s)"
        );
    }
}
