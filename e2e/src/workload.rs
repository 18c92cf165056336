//! What the tests do inside a workload cluster (the kube-apiserver, kube-scheduler,
//! kube-controller-manager and kwok of `e2e/workload/up.sh`): Deployments of pods with resource
//! requests, their pods' scheduling state, and the cluster-autoscaler's ConfigMaps.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::Poll;

/// One pod as the tests look at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    /// Pod name.
    pub name: String,
    /// True when kube-scheduler marked it `PodScheduled=False` with reason `Unschedulable`.
    pub unschedulable: bool,
    /// `spec.nodeName` ("" while unbound).
    pub node: String,
    /// `status.phase`.
    pub phase: String,
}

/// Waits until the kube-controller-manager has made the namespace's `default` ServiceAccount
/// (the ServiceAccount admission plugin refuses pods until then).
pub async fn wait_default_service_account(client: &Client, ns: &str) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    Poll::new(
        "the workload's default ServiceAccount",
        Duration::from_secs(60),
    )
    .until(|| async { anyhow::Ok(accounts.get_opt("default").await?.is_some()) })
    .await;
}

/// Creates Deployment `name` in `ns` with `replicas` pods (label `app=<name>`), each requesting
/// `cpu` and `memory`; kwok runs them once kube-scheduler binds them to a Node.
pub async fn create_deployment(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
    cpu: &str,
    memory: &str,
) {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"terminationGracePeriodSeconds": 0,
                                       "containers": [{"name": "app", "image": "capow-e2e-pause",
                                           "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
}

/// Deletes Deployment `name` and its pods (foreground: the ReplicaSet and pods go first).
pub async fn delete_deployment(client: &Client, ns: &str, name: &str) {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::foreground().grace_period(0))
        .await
        .unwrap();
}

/// The pods of Deployment `name` (label `app=<name>`), sorted by name.
pub async fn pods(client: &Client, ns: &str, name: &str) -> Vec<PodState> {
    let mut out: Vec<PodState> = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let spec = p.spec.unwrap_or_default();
            let status = p.status.unwrap_or_default();
            PodState {
                name: p.metadata.name.unwrap_or_default(),
                unschedulable: status.conditions.unwrap_or_default().iter().any(|c| {
                    c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable")
                }),
                node: spec.node_name.unwrap_or_default(),
                phase: status.phase.unwrap_or_default(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Waits until Deployment `name` has exactly `n` pods and `ok` holds for each; returns them.
/// Fails after `timeout`, showing the pods.
pub async fn wait_pods(
    client: &Client,
    ns: &str,
    name: &str,
    n: usize,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&PodState) -> bool,
) -> Vec<PodState> {
    Poll::new(format!("{n} pods of {ns}/{name} {what}"), timeout)
        .until(|| async {
            let list = pods(client, ns, name).await;
            if list.len() == n && list.iter().all(&ok) {
                Ok(list)
            } else {
                Err(format!("have {list:?}"))
            }
        })
        .await
}

/// Writes CA's priority-expander ConfigMap (`cluster-autoscaler-priority-expander`, key
/// `priorities`: a YAML map from priority to node-group id regexes; the highest priority with a
/// matching group wins; see the cluster-autoscaler FAQ and cluster-autoscaler-1.36.1
/// `expander/priority/priority.go`) into CA's `--namespace` of the workload cluster.
pub async fn apply_priority_expander(client: &Client, ns: &str, priorities: &[(u32, &[&str])]) {
    let mut text = String::new();
    for (priority, regexes) in priorities {
        text.push_str(&format!("{priority}:\n"));
        for r in *regexes {
            text.push_str(&format!("  - '{r}'\n"));
        }
    }
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "cluster-autoscaler-priority-expander", "namespace": ns},
                    "data": {"priorities": text}});
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            "cluster-autoscaler-priority-expander",
            &PatchParams::apply("capow-e2e").force(),
            &Patch::Apply(&cm),
        )
        .await
        .unwrap();
}
