//! Teardown shared by the externalgrpc tests that create CAPI objects under a paused Cluster.

use capow::capi::{Cluster, Machine, MachineDeployment, MachineSet};
use capow_e2e::TestNamespace;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

/// Deletes the test namespace, its CAPI objects, and then their finalizers: CAPI adds its
/// finalizers even under a paused Cluster but, paused, never removes them, so the namespace
/// would stay `Terminating` in the shared environment. Once an object is being deleted no
/// controller can add a finalizer to it again.
pub async fn delete_namespace(client: &kube::Client, ns: TestNamespace) {
    let name = ns.name.clone();
    ns.delete().await;
    let clear = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    let pp = PatchParams::default();
    macro_rules! release {
        ($kind:ty) => {{
            let api: Api<$kind> = Api::namespaced(client.clone(), &name);
            let _ = api
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await;
            if let Ok(list) = api.list(&ListParams::default()).await {
                for o in list.items {
                    if let Some(n) = o.metadata.name.as_deref() {
                        let _ = api.patch(n, &pp, &clear).await;
                    }
                }
            }
        }};
    }
    release!(Machine);
    release!(MachineSet);
    release!(MachineDeployment);
    release!(Cluster);
}
