//! The real cluster-autoscaler 1.36.1 with `--expander=price` against capow's externalgrpc
//! server: two scale-from-zero node groups of the same shape at different flavor prices and
//! one pending pod in a kwok workload cluster; CA must price both options (template nodes
//! without providerID, `PricingPodPrice` for the pod and its stabilisation pod) and scale the
//! cheaper group.
//!
//! The cluster-autoscaler binary (kubernetes/autoscaler, tag `cluster-autoscaler-1.36.1`,
//! built with `-tags externalgrpc`) is not built by the e2e harness yet; the test reads its
//! path from `CAPOW_E2E_CLUSTER_AUTOSCALER` and says it is skipped when that is not set.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use capow::autoscaler::node::TemplateOptions;
use capow::autoscaler::service::{CloudProviderService, RpcMetrics, ServiceOptions};
use capow::autoscaler::{server, sources};
use capow::capi::MachineDeployment;
use capow_e2e::{
    Env, TestNamespace, apply_json, client_for, log_tail, wait_until, workload_down, workload_up,
};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod support;

async fn patch_template_status(client: &kube::Client, ns: &str, name: &str, price: &str) {
    let gvk = kube::api::GroupVersionKind::gvk(
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "OpenStackWorkerMachineTemplate",
    );
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "capacity": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "20Gi"},
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
                "resolved": {"flavorName": "m1.small", "pricePerHour": price}
            }})),
        )
        .await
        .unwrap();
}

/// A workload cluster, stopped and purged when dropped (also when the test fails).
struct Workload(String);

impl Drop for Workload {
    fn drop(&mut self) {
        workload_down(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment (and CAPOW_E2E_CLUSTER_AUTOSCALER)"]
async fn the_price_expander_scales_the_cheaper_group() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Ok(ca_bin) = std::env::var("CAPOW_E2E_CLUSTER_AUTOSCALER") else {
        println!(
            "SKIPPED: set CAPOW_E2E_CLUSTER_AUTOSCALER to a cluster-autoscaler 1.36.1 binary \
             (tag cluster-autoscaler-1.36.1, built with -tags externalgrpc) to run this test"
        );
        return;
    };
    let env = Env::get();
    let client = env.client().await;
    let ns = TestNamespace::create(&client, "xgrpc-price").await;
    let name = ns.name.clone();
    let limits = json!({"cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": "0",
                        "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "3"});
    let mut objects = vec![
        json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": "c1", "namespace": name},
        "spec": {"paused": true, "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerCluster", "name": "c1"}}}),
    ];
    // The pricier group sorts first, so neither order nor chance picks the cheaper one.
    for md in ["md-a-pricey", "md-b-cheap"] {
        objects.push(json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachineTemplate",
            "metadata": {"name": format!("{md}-t"), "namespace": name},
            "spec": {"template": {"spec": {"flavor": {"id": "2"}, "image": {"id": "i"}}}}}));
        objects.push(json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
            "metadata": {"name": md, "namespace": name, "annotations": limits},
            "spec": {"clusterName": "c1", "replicas": 0, "selector": {"matchLabels": {"e2e/md": md}},
                "template": {"metadata": {"labels": {"e2e/md": md}},
                    "spec": {"clusterName": "c1", "bootstrap": {"dataSecretName": "none"},
                        "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerMachineTemplate", "name": format!("{md}-t")}}}}}));
    }
    for obj in &objects {
        apply_json(&client, obj).await.unwrap();
    }
    patch_template_status(&client, &name, "md-a-pricey-t", "0.50").await;
    patch_template_status(&client, &name, "md-b-cheap-t", "0.05").await;

    let shutdown = CancellationToken::new();
    let stores = sources::Stores::start(&client, Some(&name), &shutdown);
    stores.ready().await.unwrap();
    let service = CloudProviderService::new(
        Arc::new(stores),
        client.clone(),
        ServiceOptions {
            require_identity: false,
            template: TemplateOptions::default(),
        },
        RpcMetrics::default(),
    );
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server::serve(listener, service, None, shutdown.clone()));

    // A workload cluster with one pending pod.
    let workload = Workload(name.clone());
    let workload_kubeconfig = workload_up(&workload.0);
    let workload_client = client_for(&workload_kubeconfig).await;
    // The ServiceAccount admission plugin refuses pods until the controller manager made the
    // namespace's default ServiceAccount.
    let accounts: Api<ServiceAccount> = Api::namespaced(workload_client.clone(), "default");
    wait_until(
        "the workload's default ServiceAccount",
        Duration::from_secs(60),
        || {
            let accounts = accounts.clone();
            async move { Ok(accounts.get_opt("default").await?.is_some()) }
        },
    )
    .await;
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "pending", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "capow-e2e-pause",
                 "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}}}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(workload_client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();

    // cluster-autoscaler, insecure gRPC to the loopback server (no certificates in the
    // cloud-config).
    let dir = env.state.join(format!("price-expander-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let cloud_config = dir.join("cloud-config");
    std::fs::write(&cloud_config, format!("address: 127.0.0.1:{port}\n")).unwrap();
    let log = dir.join("cluster-autoscaler.log");
    let mut ca = tokio::process::Command::new(&ca_bin)
        .args([
            "--cloud-provider=externalgrpc",
            &format!("--cloud-config={}", cloud_config.display()),
            &format!("--kubeconfig={}", workload_kubeconfig.display()),
            &format!("--address=127.0.0.1:{}", free_port()),
            "--expander=price",
            "--namespace=kube-system",
            "--leader-elect=false",
            "--scan-interval=5s",
            "--v=5",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let mds: Api<MachineDeployment> = Api::namespaced(client.clone(), &name);
    let replicas = |md: &'static str| {
        let mds = mds.clone();
        async move {
            mds.get_scale(md)
                .await
                .map(|s| s.spec.and_then(|s| s.replicas).unwrap_or(0))
        }
    };
    let started = std::time::Instant::now();
    loop {
        let scaled = replicas("md-a-pricey").await.unwrap() + replicas("md-b-cheap").await.unwrap();
        if scaled > 0 {
            break;
        }
        if let Ok(Some(status)) = ca.try_wait() {
            panic!(
                "cluster-autoscaler exited ({status}):\n{}",
                log_tail(&log, 40)
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "cluster-autoscaler scaled nothing in 180 s:\n{}",
            log_tail(&log, 60)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (pricey, cheap) = (
        replicas("md-a-pricey").await.unwrap(),
        replicas("md-b-cheap").await.unwrap(),
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let priced: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Price expander for") || l.contains("price-expander:"))
        .collect();
    println!(
        "cluster-autoscaler's price expander:\n{}",
        priced.join("\n")
    );
    assert!(
        !text.contains("Failed to calculate node price"),
        "{}",
        log_tail(&log, 40)
    );
    assert!(
        !text.contains("Failed to get price for stabilization pod"),
        "{}",
        log_tail(&log, 40)
    );
    assert_eq!(
        (pricey, cheap),
        (0, 1),
        "the cheaper group, one node for one pod"
    );

    let _ = ca.kill().await;
    shutdown.cancel();
    drop(workload);
    support::delete_namespace(&client, ns).await;
}
