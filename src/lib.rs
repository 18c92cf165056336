//! capow: a Cluster API infrastructure provider for the OpenStack worker machines of
//! hosted-control-plane clusters, with a built-in cluster-autoscaler `externalgrpc` cloud
//! provider (the latter arrives with the autoscaler module).
//!
//! Module map (design §3):
//! - [`api`]: CRD types, no I/O;
//! - [`capi`]: read-only views of the CAPI kinds capow reads;
//! - [`openstack`]: the OpenStack client seam (Keystone, Nova, Neutron, Glance), no Kubernetes;
//! - [`controllers`]: reconcilers (observe → plan → execute → status);
//! - [`tls`]: capow's CA in a Secret, serving and per-cluster client certificates, rotation,
//!   and the rustls configs of the externalgrpc server;
//! - [`runtime`]: process wiring (CLI, logging, admin server, leader election, shutdown).

pub mod api;
pub mod autoscaler;
pub mod capi;
pub mod controllers;
pub mod kubeapi;
pub mod openstack;
pub mod runtime;
pub mod tls;
