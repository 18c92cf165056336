//! The cluster-autoscaler `externalgrpc` cloud provider: an in-memory index of node groups
//! built from the objects the manager watches, a tonic service answering the 15 RPCs from it,
//! and the mTLS transport that scopes each caller to its own cluster.

pub mod credentials;
pub mod gauges;
pub mod index;
pub mod marks;
pub mod node;
pub mod options;
pub mod pricing;
pub mod proto;
pub use crate::api::quantity;
pub mod report;
pub mod scale;
pub mod server;
pub mod service;
pub mod sources;
pub mod written;
