//! The orphan sweep against the real OpenStack: a server and a port tagged by capow for a
//! machine that does not exist are reported (report mode) and then deleted (delete mode), with
//! events and a metric; a running machine's server, a server tagged for a Cluster this manager
//! does not know, and an untagged server are never touched.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::Duration;

use capow_e2e::cloud::AdminCloud;
use capow_e2e::{
    Env, Manager, Poll, TestNamespace, apply_cluster, existing_network_spec, openstack,
    openstack_run, reqwest_get,
};
use kube::api::{Api, ListParams};

const IDENTITY: &str = "cloud-config";

fn uuid_like(seed: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{seed}-{n:x}")
}

async fn events(client: &kube::Client, ns: &str, reason: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

async fn metric(manager: &Manager, prefix: &str) -> f64 {
    let (_, body) = reqwest_get(&format!("http://{}/metrics", manager.admin))
        .await
        .unwrap();
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn create_server(name: &str, tags: &[&str]) -> String {
    let env = Env::get();
    let mut args = vec![
        "server",
        "create",
        "--flavor",
        "m1.tiny",
        "--image",
        "osdev-tiny",
        "--network",
        "osdev-net",
    ];
    for t in tags {
        args.extend(["--tag", t]);
    }
    args.push(name);
    let v = openstack(&env.cloud, &args).expect("create a server");
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn the_orphan_sweep_reports_then_deletes_only_what_capow_tagged_for_a_missing_machine() {
    let env = Env::get();
    let client = env.client().await;
    let ns = TestNamespace::with_identity(&client, "orphans", IDENTITY).await;
    let cluster = apply_cluster(&client, &ns.name, "c1", existing_network_spec(IDENTITY))
        .await
        .unwrap();
    let cluster_uid = cluster["metadata"]["uid"].as_str().unwrap().to_owned();
    let sweep = [
        "--orphan-sweep-interval",
        "2s",
        "--orphan-grace-period",
        "1s",
        "--orphan-sweep",
    ];
    let mut args = sweep.to_vec();
    args.push("report");
    let manager = Manager::start(&ns.name, &args).await;

    let cluster_tag = format!("capow-cluster-uid={cluster_uid}");
    let orphan_tag = format!("capow-machine-uid={}", uuid_like("gone"));
    let orphan = create_server(
        &format!("{}-orphan", ns.name),
        &["capow", &cluster_tag, &orphan_tag],
    );
    let port = openstack(
        &env.cloud,
        &[
            "port",
            "create",
            "--network",
            "osdev-net",
            "--tag",
            "capow",
            "--tag",
            &cluster_tag,
            "--tag",
            &orphan_tag,
            &format!("{}-orphan-port", ns.name),
        ],
    )
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let foreign_cluster = format!("capow-cluster-uid={}", uuid_like("elsewhere"));
    let foreign = create_server(
        &format!("{}-foreign", ns.name),
        &["capow", &foreign_cluster, &orphan_tag],
    );
    let untagged = create_server(&format!("{}-untagged", ns.name), &[]);

    // Report mode: events and the metric, nothing deleted.
    Poll::new(
        format!("OrphanFound events for {orphan} and {port}"),
        Duration::from_secs(60),
    )
    .every(Duration::from_millis(500))
    .log_tail(&manager.log, 30)
    .until(|| async {
        let found = events(&client, &ns.name, "OrphanFound").await;
        if found.iter().any(|n| n.contains(&orphan)) && found.iter().any(|n| n.contains(&port)) {
            Ok(())
        } else {
            Err(format!("events {found:?}"))
        }
    })
    .await;
    assert!(
        metric(
            &manager,
            "capow_orphans_total{kind=\"server\",action=\"reported\"}"
        )
        .await
            >= 1.0
    );
    let cloud = AdminCloud::login().await.unwrap();
    assert_eq!(
        cloud.servers_tagged(&orphan_tag).await.unwrap().len(),
        2,
        "report mode deletes nothing"
    );
    let reported = events(&client, &ns.name, "OrphanFound").await;
    assert!(
        !reported
            .iter()
            .any(|n| n.contains(&foreign) || n.contains(&untagged)),
        "only this manager's clusters' tagged resources are orphans: {reported:?}"
    );
    manager.stop().await;

    // Delete mode.
    let mut args = sweep.to_vec();
    args.push("delete");
    let manager = Manager::start(&ns.name, &args).await;
    Poll::new("the orphans deleted", Duration::from_secs(90))
        .every(Duration::from_millis(500))
        .log_tail(&manager.log, 30)
        .until(|| async {
            let servers: Vec<String> = cloud
                .servers_tagged(&orphan_tag)
                .await
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_owned())
                .collect();
            let ports = cloud.neutron_tagged("ports", &orphan_tag).await.unwrap();
            if servers == [foreign.clone()] && ports.is_empty() {
                Ok(())
            } else {
                Err(format!("servers {servers:?}, ports {ports:?}"))
            }
        })
        .await;
    let deleted = events(&client, &ns.name, "OrphanDeleted").await;
    assert!(deleted.iter().any(|n| n.contains(&orphan)), "{deleted:?}");
    assert!(
        metric(
            &manager,
            "capow_orphans_total{kind=\"server\",action=\"deleted\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        openstack(&env.admin_cloud, &["server", "show", &untagged]).is_ok(),
        "the untagged server is untouched"
    );
    env.record(&format!(
        "orphan sweep: {} reported, {} deleted events; foreign and untagged servers kept",
        reported.len(),
        deleted.len()
    ));

    for id in [&foreign, &untagged] {
        let _ = openstack_run(&env.cloud, &["server", "delete", "--wait", id]);
    }
    manager.stop().await;
    // The Cluster has no finalizer-bearing machines; capow is stopped, so drop the finalizer
    // of the OpenStackWorkerCluster with the namespace (nothing was created for it).
    let manager = Manager::start(&ns.name, &["--orphan-sweep", "off"]).await;
    let clusters =
        capow_e2e::hcp::dynamic(&client, &ns.name, "cluster.x-k8s.io", "v1beta2", "Cluster").await;
    let _ = clusters.delete("c1", &Default::default()).await;
    Poll::new("the Cluster deleted", Duration::from_secs(60))
        .until(|| async { clusters.get_opt("c1").await.unwrap().is_none() })
        .await;
    manager.stop().await;
    ns.delete().await;
}
