//! CRD types of capow (`infrastructure.cluster.x-k8s.io/v1alpha1`). No I/O lives here.
//!
//! [`crds`] lists every CRD with the CAPI contract label
//! `cluster.x-k8s.io/v1beta2: v1alpha1` that CAPI uses to find the served version
//! (cluster-api `docs/book/src/developer/providers/contracts/overview.md`).

pub mod autoscaler;
pub mod autoscaling;
pub mod cluster;
pub mod common;
pub mod conditions;
pub mod lifecycle;
pub mod machine;
pub mod machine_template;
pub mod ownership;
pub mod quantity;

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use cluster::{
    OpenStackWorkerCluster, OpenStackWorkerClusterSpec, OpenStackWorkerClusterStatus,
    OpenStackWorkerClusterTemplate,
};
pub use machine::{
    OpenStackWorkerMachine, OpenStackWorkerMachineSpec, OpenStackWorkerMachineStatus,
};
pub use machine_template::{OpenStackWorkerMachineTemplate, OpenStackWorkerMachineTemplateSpec};

/// API group of every capow kind (shared with CAPO; capow's kind names never clash with it).
pub const GROUP: &str = "infrastructure.cluster.x-k8s.io";
/// API version of every capow kind.
pub const VERSION: &str = "v1alpha1";
/// Label key naming the CAPI contract a CRD fulfils, and its value: the CRD versions that
/// implement it, `_`-separated (CAPI contract `overview.md`, "API version labels").
pub const CONTRACT_LABEL: (&str, &str) = ("cluster.x-k8s.io/v1beta2", "v1alpha1");
/// clusterctl provider label (`cluster.x-k8s.io/provider`) and capow's provider name.
pub const PROVIDER_LABEL: (&str, &str) = (
    "cluster.x-k8s.io/provider",
    "infrastructure-openstack-workers",
);

/// Every capow CRD, in a stable order, labelled with the CAPI contract and provider labels.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        OpenStackWorkerCluster::crd(),
        OpenStackWorkerClusterTemplate::crd(),
        OpenStackWorkerMachine::crd(),
        OpenStackWorkerMachineTemplate::crd(),
    ];
    for crd in &mut crds {
        let labels = crd.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(CONTRACT_LABEL.0.to_owned(), CONTRACT_LABEL.1.to_owned());
        labels.insert(PROVIDER_LABEL.0.to_owned(), PROVIDER_LABEL.1.to_owned());
    }
    crds
}
