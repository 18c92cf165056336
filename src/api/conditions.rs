//! Condition types and reasons of the capow kinds, and the helper that keeps a condition list
//! in the `metav1.Condition` shape CAPI v1beta2 expects (`Ready` first, `lastTransitionTime`
//! kept while the status does not change).
//!
//! Reasons follow CAPO v1beta2 `api/v1beta2/conditions_consts.go` where CAPO has one, so that
//! operators moving from CAPO recognise them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use schemars::{Schema, SchemaGenerator, json_schema};

/// Summary condition; CAPI mirrors it to `Machine.status.conditions[InfrastructureReady]`.
pub const READY: &str = "Ready";
/// True while the object or its Cluster is paused (CAPI v1beta2 contract).
pub const PAUSED: &str = "Paused";

/// Whether the cluster-autoscaler capow runs for the cluster (`spec.autoscaler`) is deployed
/// and available; present only while capow runs one or is removing one.
pub const AUTOSCALER_READY: &str = "AutoscalerReady";

/// Reasons of the [`AUTOSCALER_READY`] condition.
pub mod autoscaler_reasons {
    /// The Deployment is available (True).
    pub const AVAILABLE: &str = "AutoscalerAvailable";
    /// The Deployment is applied and not available yet.
    pub const DEPLOYED: &str = "AutoscalerDeployed";
    /// No image: neither `spec.autoscaler.image` nor the manager's
    /// `--autoscaler-image-repository` with a known Kubernetes version gives one.
    pub const IMAGE_MISSING: &str = "AutoscalerImageMissing";
    /// `spec.autoscaler` breaks a rule (stored before the CRD's rule existed); nothing changed.
    pub const INVALID: &str = "AutoscalerInvalid";
    /// The credentials Secret for the cluster-autoscaler is not published (yet).
    pub const CREDENTIALS_MISSING: &str = "AutoscalerCredentialsMissing";
    /// The workload cluster's kubeconfig Secret is missing or its API server cannot be used.
    pub const WORKLOAD_CLUSTER_UNREACHABLE: &str = "WorkloadClusterUnreachable";
    /// Writing the Deployment or its kubeconfig Secret in the management cluster failed.
    pub const DEPLOY_FAILED: &str = "AutoscalerDeployFailed";
    /// `spec.autoscaler` was removed or disabled and capow is removing what it made.
    pub const REMOVING: &str = "AutoscalerRemoving";
}

/// Reasons of the `Ready` condition of an `OpenStackWorkerMachine`.
pub mod reasons {
    /// Everything is in place.
    pub const READY: &str = "Ready";
    /// The server is ACTIVE and the providerID is set.
    pub const INSTANCE_READY: &str = "InstanceReady";
    /// The object has no owner `Machine` yet.
    pub const WAITING_FOR_OWNER: &str = "WaitingForOwner";
    /// The owner Machine's Cluster does not exist yet or its infrastructure is not provisioned.
    pub const WAITING_FOR_CLUSTER_INFRASTRUCTURE: &str = "WaitingForClusterInfrastructure";
    /// `Machine.spec.bootstrap.dataSecretName` is unset or the Secret is missing.
    pub const WAITING_FOR_BOOTSTRAP_DATA: &str = "WaitingForBootstrapData";
    /// The spec names something that does not exist or is ambiguous in OpenStack.
    pub const INVALID_MACHINE_SPEC: &str = "InvalidMachineSpec";
    /// The identityRef Secret is missing or its clouds.yaml is unusable.
    pub const INVALID_IDENTITY: &str = "InvalidIdentity";
    /// Keystone refused the credentials.
    pub const OPENSTACK_AUTHENTICATION_FAILED: &str = "OpenStackAuthenticationFailed";
    /// An OpenStack API call failed for a reason other than bad input.
    pub const OPENSTACK_ERROR: &str = "OpenStackError";
    /// Creating a port failed.
    pub const PORT_CREATE_FAILED: &str = "PortCreateFailed";
    /// A Cinder volume for the server could not be created.
    pub const VOLUME_CREATE_FAILED: &str = "VolumeCreateFailed";
    /// Nova refused to create the server.
    pub const INSTANCE_CREATE_FAILED: &str = "InstanceCreateFailed";
    /// The server exists but is not ACTIVE yet.
    pub const INSTANCE_NOT_READY: &str = "InstanceNotReady";
    /// The server is in ERROR; the message carries Nova's fault.
    pub const INSTANCE_STATE_ERROR: &str = "InstanceStateError";
    /// The server recorded in status no longer exists in Nova.
    pub const INSTANCE_NOT_FOUND: &str = "InstanceNotFound";
    /// The object is being deleted and its OpenStack resources are being removed.
    pub const DELETING: &str = "Deleting";
    /// Deleting OpenStack resources failed; the finalizer stays until it succeeds.
    pub const INSTANCE_DELETE_FAILED: &str = "InstanceDeleteFailed";
    /// `spec.providerID` names a server capow did not make for this machine (it does not
    /// exist, lacks capow's ownership marks, or belongs to another machine): it is neither
    /// adopted nor deleted, and no other server is created.
    pub const PROVIDER_ID_NOT_OWNED: &str = "ProviderIDNotOwned";
    /// Reconciliation is paused (Cluster `spec.paused` or `cluster.x-k8s.io/paused`).
    pub const PAUSED: &str = "Paused";
    /// Not paused.
    pub const NOT_PAUSED: &str = "NotPaused";
}

/// Builds a condition; `lastTransitionTime` is set to now and fixed up by [`set_condition`].
/// The message loses OpenStack request ids (` (request req-…)`, see
/// [`without_request_ids`]) so that a retried failure writes the same status.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: truncate_message(without_request_ids(message.into())),
        observed_generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Inserts or replaces `new` in `conditions` by type. The previous `lastTransitionTime` is kept
/// when the status did not change. `Ready` is kept first, the others sorted by type, so that
/// repeated reconciles produce byte-identical status (no spurious writes).
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    if let Some(old) = conditions.iter().find(|c| c.type_ == new.type_)
        && old.status == new.status
    {
        new.last_transition_time = old.last_transition_time.clone();
    }
    conditions.retain(|c| c.type_ != new.type_);
    conditions.push(new);
    conditions.sort_by(|a, b| {
        (a.type_ != READY, a.type_.as_str()).cmp(&(b.type_ != READY, b.type_.as_str()))
    });
}

/// True when `a` and `b` carry the same content, ignoring `lastTransitionTime`.
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

/// A status with a `conditions` list (metav1.Condition, the CAPI v1beta2 contract shape).
pub trait WithConditions: Clone + PartialEq {
    /// The `status.conditions` list.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

/// True when `before` and `after` differ in nothing but condition `lastTransitionTime`s, so
/// writing `after` would be a no-op for readers; controllers skip the status write then.
pub fn status_unchanged<S: WithConditions>(before: &S, after: &S) -> bool {
    let mut a = before.clone();
    let mut b = after.clone();
    let same = same_conditions(a.conditions_mut(), b.conditions_mut());
    a.conditions_mut().clear();
    b.conditions_mut().clear();
    same && a == b
}

macro_rules! with_conditions {
    ($($t:ty),*) => {$(
        impl WithConditions for $t {
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
        }
    )*};
}

with_conditions!(
    crate::api::cluster::OpenStackWorkerClusterStatus,
    crate::api::machine::OpenStackWorkerMachineStatus,
    crate::api::machine_template::OpenStackWorkerMachineTemplateStatus
);

/// metav1.Condition messages are limited to 32768 bytes by the API server.
/// `message` without the ` (request req-…)` parts the OpenStack client adds to API errors.
///
/// Every OpenStack call gets a new request id, so a condition that carried it would change on
/// every retry of the same failure: each status write is a watch event that starts the next
/// reconcile at once (and makes CAPI update the Machine, another event), a loop that retried a
/// quota-refused server create 2–3 times a second. Events and logs keep the id.
pub fn without_request_ids(message: String) -> String {
    const START: &str = " (request req-";
    if !message.contains(START) {
        return message;
    }
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    while let Some(i) = rest.find(START) {
        out.push_str(&rest[..i]);
        match rest[i..].find(')') {
            Some(end) => rest = &rest[i + end + 1..],
            None => {
                rest = &rest[i..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

fn truncate_message(mut message: String) -> String {
    const MAX: usize = 32_768;
    if message.len() > MAX {
        let mut end = MAX - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// OpenAPI schema of a `[]metav1.Condition` list keyed by `type` (`x-kubernetes-list-type: map`),
/// as CAPI v1beta2 declares it.
pub fn conditions_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "description": "Condition in the metav1.Condition shape.",
            "required": ["type", "status", "lastTransitionTime", "reason"],
            "properties": {
                "type": {"type": "string", "maxLength": 316, "description": "Type of condition in CamelCase."},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"], "description": "Status of the condition."},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0, "description": "metadata.generation the condition was set from."},
                "lastTransitionTime": {"type": "string", "format": "date-time", "description": "Last time the status changed."},
                "reason": {"type": "string", "maxLength": 1024, "description": "Machine-readable reason in CamelCase."},
                "message": {"type": "string", "maxLength": 32768, "description": "Human-readable details."}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_messages_lose_request_ids_and_keep_the_rest() {
        let m = "failed to create the server: compute server_create failed with HTTP 403 Forbidden (request req-3b9f0c1e-0d7a-4f7e-9a51-5a1f7e2c9d10): Quota exceeded for ram: Requested 1100000, but already used 0 of 1024000 ram";
        let c = condition(READY, false, "InstanceCreateFailed", m, None);
        assert_eq!(
            c.message,
            "failed to create the server: compute server_create failed with HTTP 403 Forbidden: Quota exceeded for ram: Requested 1100000, but already used 0 of 1024000 ram"
        );
        assert_eq!(
            without_request_ids("a (request req-1): b (request req-2): c".into()),
            "a: b: c"
        );
        assert_eq!(
            without_request_ids("no ids (request x)".into()),
            "no ids (request x)"
        );
        assert_eq!(
            without_request_ids("cut (request req-9".into()),
            "cut (request req-9"
        );
    }

    #[test]
    fn status_unchanged_ignores_only_transition_times() {
        use crate::api::machine::OpenStackWorkerMachineStatus;
        let mut c = condition(READY, true, reasons::INSTANCE_READY, "", Some(1));
        c.last_transition_time = Time("2020-01-01T00:00:00Z".parse().unwrap());
        let before = OpenStackWorkerMachineStatus {
            conditions: vec![c],
            instance_id: Some("a".into()),
            ..Default::default()
        };
        let mut later = before.clone();
        later.conditions[0].last_transition_time = Time("2021-01-01T00:00:00Z".parse().unwrap());
        assert!(status_unchanged(&before, &later));

        let mut message = before.clone();
        message.conditions[0].message = "other".into();
        assert!(!status_unchanged(&before, &message));

        let mut field = before.clone();
        field.instance_id = Some("b".into());
        assert!(!status_unchanged(&before, &field));

        let mut fewer = before.clone();
        fewer.conditions.clear();
        assert!(!status_unchanged(&before, &fewer));
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_unchanged() {
        let mut list = vec![];
        let mut first = condition(
            READY,
            false,
            reasons::INSTANCE_NOT_READY,
            "building",
            Some(1),
        );
        first.last_transition_time = Time("2020-01-01T00:00:00Z".parse().unwrap());
        set_condition(&mut list, first);
        set_condition(
            &mut list,
            condition(READY, false, reasons::INSTANCE_NOT_READY, "x", Some(2)),
        );
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].message, "x");
        assert_eq!(
            list[0].last_transition_time.0.to_string(),
            "2020-01-01T00:00:00Z"
        );

        set_condition(
            &mut list,
            condition(READY, true, reasons::INSTANCE_READY, "", Some(2)),
        );
        assert_ne!(
            list[0].last_transition_time.0.to_string(),
            "2020-01-01T00:00:00Z"
        );
    }

    #[test]
    fn ready_is_kept_first() {
        let mut list = vec![];
        set_condition(
            &mut list,
            condition(PAUSED, false, reasons::NOT_PAUSED, "", None),
        );
        set_condition(&mut list, condition("Alpha", true, "X", "", None));
        set_condition(
            &mut list,
            condition(READY, true, reasons::INSTANCE_READY, "", None),
        );
        let types: Vec<_> = list.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Alpha", "Paused"]);
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let c = condition(READY, false, "R", "é".repeat(20_000), None);
        assert!(c.message.len() <= 32_768);
        assert!(c.message.ends_with("..."));
    }
}
