//! End-to-end tests of capow's TLS module against the real kube-apiserver started by
//! `e2e/env.sh up`: the CA Secret under concurrent creation, and the per-cluster
//! cluster-autoscaler Secret under repeated publishing. Run them with `e2e/test.sh`.
//!
//! Secret contents are compared, never printed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use capow::capi::{CLUSTER_NAME_LABEL, Cluster};
use capow::tls::{Ca, CaOrigin, CloudConfig, PublishSettings, publish};
use capow_e2e::{Env, TestNamespace, apply_json};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;

/// Rounds of two managers starting at the same moment (bounded; each round takes a few ms).
const ROUNDS: usize = 10;

#[tokio::test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn racing_managers_end_with_one_ca_and_a_restart_keeps_it() {
    let env = Env::get();
    let client = env.client().await;
    let ns = TestNamespace::create(&client, "tls-ca").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);

    let mut lost_races = 0;
    let started = Instant::now();
    for round in 0..ROUNDS {
        let name = format!("capow-ca-{round}");
        // Two managers: separate clients (separate connections), released together.
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let client = env.client().await;
            let (barrier, ns, name) = (barrier.clone(), ns.name.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                Ca::load_or_create(&client, &ns, &name).await
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            let (ca, origin) = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("load_or_create finished within 30 s")
                .unwrap()
                .expect("load_or_create succeeded");
            results.push((ca, origin));
        }
        let (a, b) = (&results[0], &results[1]);
        assert_eq!(a.0.cert_pem(), b.0.cert_pem(), "round {round}: two CAs");
        let mut origins = [a.1, b.1];
        origins.sort_by_key(|o| *o as u8);
        assert!(
            matches!(
                origins,
                [CaOrigin::Loaded, CaOrigin::Created] | [CaOrigin::Created, CaOrigin::LostRace]
            ),
            "round {round}: exactly one creator, got {origins:?}"
        );
        if origins.contains(&CaOrigin::LostRace) {
            lost_races += 1;
        }

        // The Secret holds that CA.
        let stored = secrets.get(&name).await.unwrap();
        let stored_crt = &stored.data.as_ref().unwrap()["tls.crt"].0;
        assert_eq!(stored_crt.as_slice(), a.0.cert_pem().as_bytes());

        // A restarted manager (new client, new call) loads the same CA and signs with it.
        let (again, origin) = Ca::load_or_create(&env.client().await, &ns.name, &name)
            .await
            .unwrap();
        assert_eq!(origin, CaOrigin::Loaded);
        assert_eq!(again.cert_pem(), a.0.cert_pem());
        assert_eq!(again.validity(), a.0.validity());
    }
    env.record(&format!(
        "tls: {ROUNDS} rounds of two concurrent CA load_or_create calls, {lost_races} lost the \
         create race (409) and adopted the winner's CA; {:?} in total",
        started.elapsed()
    ));
    ns.delete().await;
}

#[tokio::test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn publishing_the_cluster_secret_twice_changes_nothing_until_renewal() {
    let env = Env::get();
    let client = env.client().await;
    let ns = TestNamespace::create(&client, "tls-publish").await;
    apply_json(
        &client,
        &json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
                "metadata": {"name": "c1", "namespace": ns.name},
                "spec": {"paused": true, "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerCluster", "name": "c1"}}}),
    )
    .await
    .expect("create Cluster");
    let cluster = Api::<Cluster>::namespaced(client.clone(), &ns.name)
        .get("c1")
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let (ca, _) = Ca::load_or_create(&client, &ns.name, "capow-ca")
        .await
        .unwrap();
    let settings = PublishSettings::new("capow-autoscaler.capow-system.svc:8086");
    let now = SystemTime::now();

    let first = publish(&client, &ca, &cluster, &settings, now)
        .await
        .unwrap();
    assert!(first.reissued);
    assert_eq!(first.secret_name, "c1-capow-autoscaler");
    let s1 = secrets.get(&first.secret_name).await.unwrap();
    assert_eq!(
        s1.metadata.labels.as_ref().unwrap()[CLUSTER_NAME_LABEL],
        "c1"
    );
    let owner = &s1.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Cluster", cluster.metadata.uid.as_deref().unwrap())
    );
    let managers: Vec<_> = s1
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.as_deref())
        .collect();
    assert_eq!(managers, ["capow"]);
    let data = s1.data.as_ref().unwrap();
    let cloud_config =
        CloudConfig::from_yaml(std::str::from_utf8(&data["cloud-config"].0).unwrap()).unwrap();
    assert_eq!(cloud_config.grpc_timeout, "5s");
    assert_eq!(
        cloud_config.host().unwrap(),
        "capow-autoscaler.capow-system.svc"
    );
    assert_eq!(data["ca.crt"].0.as_slice(), ca.cert_pem().as_bytes());

    // Again, and again after a manager restart (CA reloaded from its Secret): same
    // certificate, and the API server did not even write (same resourceVersion).
    let second = publish(&client, &ca, &cluster, &settings, now)
        .await
        .unwrap();
    let (reloaded, _) = Ca::load_or_create(&env.client().await, &ns.name, "capow-ca")
        .await
        .unwrap();
    let third = publish(&client, &reloaded, &cluster, &settings, SystemTime::now())
        .await
        .unwrap();
    for p in [&second, &third] {
        assert!(!p.reissued);
        assert_eq!(p.serial, first.serial);
    }
    let s3 = secrets.get(&first.secret_name).await.unwrap();
    assert_eq!(s3.metadata.resource_version, s1.metadata.resource_version);
    assert_eq!(s3.data, s1.data);

    // 250 of the 365 days later, less than a third of the lifetime remains: a new certificate.
    let due = now + Duration::from_secs(250 * 86_400);
    let renewed = publish(&client, &ca, &cluster, &settings, due)
        .await
        .unwrap();
    assert!(renewed.reissued);
    assert_ne!(renewed.serial, first.serial);
    let s4 = secrets.get(&first.secret_name).await.unwrap();
    assert_ne!(s4.data.as_ref().unwrap()["tls.crt"], data["tls.crt"]);
    assert_ne!(s4.data.as_ref().unwrap()["tls.key"], data["tls.key"]);
    assert_eq!(
        s4.data.as_ref().unwrap()["cloud-config"],
        data["cloud-config"]
    );
    // ... which then stays.
    let after = publish(&client, &ca, &cluster, &settings, due)
        .await
        .unwrap();
    assert!(!after.reissued);
    assert_eq!(after.serial, renewed.serial);

    ns.delete().await;
}
