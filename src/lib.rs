//! capow: a Cluster API infrastructure provider for the OpenStack worker machines of
//! hosted-control-plane clusters, with a built-in cluster-autoscaler `externalgrpc` cloud
//! provider.
//!
//! Module map (each module's `//!` header says what it owns; README.md, "Layout"; the layers
//! and what may import what: docs/architecture.md, checked by `tests/layering.rs`):
//! - [`api`]: CRD types of the capow kinds and the pure logic on them that several parts
//!   share: the ownership tags and metadata keys on OpenStack resources and the providerID
//!   ([`api::ownership`]), the node lifecycle settings of a MachineDeployment
//!   ([`api::lifecycle::settings`]), the autoscaler's size annotations ([`api::autoscaling`]);
//!   no I/O;
//! - [`capi`]: read-only views of the CAPI v1beta2 kinds capow reads;
//! - [`kubeapi`]: the Kubernetes client timeouts every request and watch shares;
//! - [`openstack`]: the OpenStack client seam (Keystone v3, the service catalog, Nova, Neutron,
//!   Glance, Cinder), no Kubernetes;
//! - [`controllers`]: the reconcilers of the machine, cluster and machine template kinds, the
//!   node lifecycle controller and the orphan sweep, one folder each (observe → plan → execute
//!   → status); what they share sits in `controllers/` itself: the reconcile
//!   [`controllers::Error`] (categories, condition reasons as [`controllers::Reason`],
//!   retries), the reconcile, error-policy and run-loop tails (`controllers/run.rs`), the
//!   status writer ([`controllers::status`]), the identity and OpenStack session
//!   ([`controllers::identity`]) and the "by ID or by a filter that matches exactly one"
//!   resolvers ([`controllers::resolve`]). No controller imports another;
//! - [`autoscaler`]: the externalgrpc cloud provider: the node-group index, template nodes,
//!   options, pricing, the tonic service and its mTLS transport (it shares caches with the
//!   controllers, not code: it does not import [`controllers`]);
//! - [`tls`]: capow's CA in a Secret, serving and per-cluster client certificates, rotation,
//!   and the rustls configs of the externalgrpc server;
//! - [`manifests`]: the generated install manifests (`config/`, the clusterctl provider files,
//!   the generated parts of the Helm chart, the Cluster Stack `clusterstack/`) and the CRD files,
//!   written by `capow manifests` and `capow crd`;
//! - [`runtime`]: process wiring (CLI, logging, admin server, leader election, shutdown).

pub mod api;
pub mod autoscaler;
pub mod caches;
pub mod capi;
pub mod controllers;
pub mod kubeapi;
pub mod manifests;
pub mod openstack;
pub mod runtime;
pub mod tls;
