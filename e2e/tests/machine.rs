//! End-to-end tests of the OpenStackWorkerMachine controller against the real kube-apiserver
//! and the real OpenStack started by `e2e/env.sh up`. Run them with `e2e/test.sh`.
//!
//! Each test has its own namespace and its own `capow manager --namespace <ns>` process, and
//! checks OpenStack through the `openstack` CLI as the admin, independently of capow's client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::{Duration, Instant};

use base64::Engine;
use capow_e2e::{
    Env, Manager, Poll, TestNamespace, apply_cluster, apply_json, apply_secret, clouds_yaml_text,
    existing_network_spec, openstack, openstack_run, ports_tagged, server_show, servers_tagged,
};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const IDENTITY: &str = "cloud-config";

/// A namespace with a provisioned Cluster and capow's identity Secret.
struct Fixture {
    client: Client,
    ns: TestNamespace,
}

impl Fixture {
    async fn new(prefix: &str) -> Fixture {
        let env = Env::get();
        let client = env.client().await;
        let ns = TestNamespace::with_identity(&client, prefix, IDENTITY).await;
        let f = Fixture { client, ns };
        f.cluster("c1").await;
        f
    }

    fn ns(&self) -> &str {
        &self.ns.name
    }

    /// A v1beta2 Cluster whose infrastructure is an OpenStackWorkerCluster on the cloud's
    /// existing `osdev-net`. The real CAPI Cluster controller owns the Cluster's status and
    /// reports the infrastructure provisioned once capow's cluster controller does.
    async fn cluster(&self, name: &str) {
        apply_cluster(
            &self.client,
            self.ns(),
            name,
            existing_network_spec(IDENTITY),
        )
        .await
        .expect("create the Cluster");
    }

    /// Waits until CAPI reports the Cluster's infrastructure provisioned (capow's cluster
    /// controller made the OpenStackWorkerCluster ready, CAPI copied that).
    async fn wait_cluster_provisioned(&self, manager: &Manager) {
        let clusters = self.dynamic("cluster.x-k8s.io", "v1beta2", "Cluster").await;
        Poll::new("Cluster c1 provisioned", Duration::from_secs(60))
            .log_tail(&manager.log, 30)
            .until(|| async {
                let c = serde_json::to_value(clusters.get("c1").await.unwrap()).unwrap();
                if c["status"]["initialization"]["infrastructureProvisioned"] == true {
                    Ok(())
                } else {
                    Err(format!("status {}", c["status"]))
                }
            })
            .await;
    }

    /// Deletes the Cluster (CAPI deletes what is left of its Machines, then the
    /// OpenStackWorkerCluster, which capow cleans up), waits until it is gone, then stops the
    /// manager and deletes the namespace.
    async fn teardown(self, manager: Manager) {
        let clusters = self.dynamic("cluster.x-k8s.io", "v1beta2", "Cluster").await;
        let _ = clusters.delete("c1", &DeleteParams::default()).await;
        let infra = self
            .dynamic(
                "infrastructure.cluster.x-k8s.io",
                "v1alpha1",
                "OpenStackWorkerCluster",
            )
            .await;
        Poll::new("cluster c1 deleted", Duration::from_secs(120))
            .every(Duration::from_millis(500))
            .log_tail(&manager.log, 30)
            .until(|| async {
                clusters.get_opt("c1").await.ok().flatten().is_none()
                    && infra.get_opt("c1").await.ok().flatten().is_none()
            })
            .await;
        manager.stop().await;
        self.ns.delete().await;
    }

    async fn dynamic(&self, group: &str, version: &str, kind: &str) -> Api<DynamicObject> {
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        let (ar, _) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .expect("discover kind");
        Api::namespaced_with(self.client.clone(), self.ns(), &ar)
    }

    async fn oswm_api(&self) -> Api<DynamicObject> {
        self.dynamic(
            "infrastructure.cluster.x-k8s.io",
            "v1alpha1",
            "OpenStackWorkerMachine",
        )
        .await
    }

    /// A Machine, its bootstrap Secret (unless `bootstrap` is None) and its
    /// OpenStackWorkerMachine with `spec`. Returns the bootstrap data.
    async fn machine(&self, name: &str, spec: Value, bootstrap: Option<&str>) -> String {
        let data = format!(
            "#cloud-config\n# capow e2e machine {}/{name}\nruncmd: [[echo, hello]]\n",
            self.ns()
        );
        let secret = format!("{name}-bootstrap");
        if let Some(secret) = bootstrap {
            apply_secret(
                &self.client,
                self.ns(),
                secret,
                &[("value", data.as_bytes()), ("format", b"cloud-config")],
            )
            .await;
        }
        let machine = apply_json(
            &self.client,
            &json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
                "metadata": {"name": name, "namespace": self.ns(), "labels": {"cluster.x-k8s.io/cluster-name": "c1"}},
                "spec": {"clusterName": "c1", "bootstrap": {"dataSecretName": bootstrap.unwrap_or(&secret)},
                         "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerMachine", "name": name}}}),
        )
        .await
        .expect("create Machine");
        apply_json(
            &self.client,
            &json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachine",
                "metadata": {"name": name, "namespace": self.ns(), "labels": {"cluster.x-k8s.io/cluster-name": "c1"},
                             "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "name": name,
                                                  "uid": machine["metadata"]["uid"]}]},
                "spec": spec}),
        )
        .await
        .expect("create OpenStackWorkerMachine");
        data
    }

    async fn oswm(&self, name: &str) -> Option<Value> {
        let obj = self
            .oswm_api()
            .await
            .get_opt(name)
            .await
            .expect("get OpenStackWorkerMachine")?;
        Some(serde_json::to_value(obj).unwrap())
    }

    async fn ready(&self, name: &str) -> Option<Value> {
        let m = self.oswm(name).await?;
        m["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")
            .cloned()
    }

    async fn wait_ready_reason(&self, name: &str, reason: &str, manager: &Manager) -> Value {
        Poll::new(
            format!("{name}: Ready with reason {reason}"),
            Duration::from_secs(90),
        )
        .log_tail(&manager.log, 40)
        .until(|| async {
            match self.ready(name).await {
                Some(c) if c["reason"] == reason => Ok(c),
                last => Err(format!("last {last:?}")),
            }
        })
        .await
    }

    async fn events_for(&self, name: &str) -> Vec<(String, String, String)> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), self.ns());
        api.list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    async fn delete_and_wait(&self, name: &str) {
        let api = self.oswm_api().await;
        let _ = api.delete(name, &DeleteParams::default()).await;
        Poll::new(format!("{name} deleted"), Duration::from_secs(90))
            .until(|| async { self.oswm(name).await.is_none() })
            .await;
    }

    async fn touch(&self, name: &str) {
        let api = self.oswm_api().await;
        let patch =
            json!({"metadata": {"annotations": {"e2e/touch": format!("{:?}", Instant::now())}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("annotate");
    }
}

fn uid_tag(m: &Value) -> String {
    format!(
        "capow-machine-uid={}",
        m["metadata"]["uid"].as_str().unwrap()
    )
}

fn spec(flavor: Value, image: Value, network: Value) -> Value {
    json!({
        "flavor": flavor,
        "image": image,
        "ports": [{"network": network}],
        "identityRef": {"name": IDENTITY, "cloudName": Env::get().cloud},
    })
}

fn good_spec() -> Value {
    spec(
        json!({"filter": {"name": "m1.tiny"}}),
        json!({"filter": {"name": "osdev-tiny"}}),
        json!({"filter": {"name": "osdev-net"}}),
    )
}

#[tokio::test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn machine_lifecycle_creates_a_server_with_bootstrap_data_and_deletes_it() {
    let env = Env::get();
    let f = Fixture::new("lifecycle").await;
    let manager = Manager::start(f.ns(), &[]).await;
    f.wait_cluster_provisioned(&manager).await;
    let requests_at_start = manager.openstack_requests().await;

    let mut spec = good_spec();
    spec["tags"] = json!(["e2e", "lifecycle"]);
    spec["serverMetadata"] = json!([{"key": "role", "value": "worker"}]);
    spec["securityGroups"] = json!([{"filter": {"name": "default"}}]);
    let started = Instant::now();
    let user_data = f.machine("m1", spec, Some("m1-bootstrap")).await;

    // Wait for ACTIVE and providerID, timing both.
    let (mut active_at, mut provider_at) = (None, None);
    let poll = Poll::new("m1 provisioned", Duration::from_secs(90))
        .every(Duration::from_millis(100))
        .log_tail(&manager.log, 40);
    loop {
        let m = f.oswm("m1").await.unwrap_or_default();
        if active_at.is_none() && m["status"]["instanceState"] == "ACTIVE" {
            active_at = Some(started.elapsed());
        }
        if provider_at.is_none() && m["spec"]["providerID"].is_string() {
            provider_at = Some(started.elapsed());
        }
        if m["status"]["initialization"]["provisioned"] == true && provider_at.is_some() {
            break;
        }
        poll.tick(format_args!("status {}", m["status"])).await;
    }
    let requests_to_ready = manager.openstack_requests().await - requests_at_start;

    let m = f.oswm("m1").await.unwrap();
    let status = &m["status"];
    let server_id = status["instanceID"]
        .as_str()
        .expect("instanceID")
        .to_owned();
    assert_eq!(m["spec"]["providerID"], format!("openstack:///{server_id}"));
    let ready = f.ready("m1").await.unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("InstanceReady"))
    );
    assert_eq!(
        status["conditions"][0]["type"], "Ready",
        "Ready comes first"
    );

    // Nova, as the admin sees it: exactly this server carries the UID tag.
    let tagged = servers_tagged(&uid_tag(&m));
    assert_eq!(tagged.len(), 1, "{tagged:?}");
    assert_eq!(tagged[0]["ID"], server_id);
    let server = server_show(&server_id);
    assert_eq!(server["status"], "ACTIVE");
    assert_eq!(server["name"], "m1");
    assert_eq!(server["flavor"]["original_name"], "m1.tiny", "{server}");
    assert_eq!(
        server["image"]["name"].as_str().or(server["image"]
            .as_str()
            .map(|s| s.split(' ').next().unwrap())),
        Some("osdev-tiny"),
        "{server}"
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(&user_data);
    assert_eq!(
        server["OS-EXT-SRV-ATTR:user_data"], encoded,
        "user data is the bootstrap Secret's value"
    );
    let tags: Vec<&str> = server["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in ["capow", &uid_tag(&m), "e2e", "lifecycle"] {
        assert!(tags.contains(&want), "tag {want} missing from {tags:?}");
    }
    assert!(
        tags.iter().any(|t| t.starts_with("capow-cluster-uid=")),
        "{tags:?}"
    );
    let props = &server["properties"];
    assert_eq!(props["role"], "worker", "{props}");
    assert_eq!(props["capow-cluster"], format!("{}/c1", f.ns()), "{props}");
    assert_eq!(props["capow-machine-uid"], m["metadata"]["uid"]);
    // The server sits on the requested network with the address capow reports.
    let addresses = server["addresses"].as_object().expect("addresses");
    let ip = addresses["osdev-net"][0]
        .as_str()
        .expect("osdev-net address")
        .to_owned();
    assert_eq!(
        status["addresses"][0],
        json!({"type": "InternalIP", "address": ip})
    );

    // One plain port (a network, nothing else): Nova made it with the server (the default
    // `--port-creation auto`), so capow made and tagged no port of its own.
    assert_eq!(status["resolved"]["portsCreatedByNova"], true, "{status}");
    assert!(
        status["resources"]["ports"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{status}"
    );
    assert!(ports_tagged(&uid_tag(&m)).is_empty(), "no port of capow's");
    let bound = openstack(
        &env.admin_cloud,
        &["port", "list", "--device-id", &server_id],
    )
    .unwrap();
    assert_eq!(bound.as_array().map(Vec::len), Some(1), "{bound}");
    let port_id = bound[0]["ID"].as_str().unwrap().to_owned();
    let port = openstack(&env.admin_cloud, &["port", "show", &port_id]).unwrap();
    let want_groups = &status["resolved"]["ports"][0]["securityGroups"];
    assert_eq!(
        want_groups.as_array().map(Vec::len),
        Some(1),
        "spec.securityGroups resolved to an ID: {status}"
    );
    assert_eq!(
        &port["security_group_ids"], want_groups,
        "Nova's port carries the resolved security groups"
    );

    let events = f.events_for("m1").await;
    assert!(
        events
            .iter()
            .any(|(t, r, n)| t == "Normal" && r == "ServerCreated" && n.contains(&server_id)),
        "{events:?}"
    );

    // Delete: the server and the port go, then the object.
    let delete_started = Instant::now();
    f.delete_and_wait("m1").await;
    let deleted_after = delete_started.elapsed();
    assert!(
        servers_tagged(&uid_tag(&m)).is_empty(),
        "server left behind"
    );
    let port_left = openstack(
        &env.admin_cloud,
        &["port", "list", "--device-id", &server_id],
    )
    .unwrap();
    assert_eq!(
        port_left.as_array().map(Vec::len),
        Some(0),
        "Nova deleted its port {port_id} with the server: {port_left}"
    );
    let requests_total = manager.openstack_requests().await - requests_at_start;

    env.record(&format!(
        "machine lifecycle: create->ACTIVE seen {:.1}s, create->providerID {:.1}s, delete {:.1}s; OpenStack API calls: {requests_to_ready} to ready, {requests_total} for the whole lifecycle (incl. token); manager peak RSS {} KiB",
        active_at.unwrap().as_secs_f64(),
        provider_at.unwrap().as_secs_f64(),
        deleted_after.as_secs_f64(),
        manager.peak_rss_kib(),
    ));
    f.teardown(manager).await;
}

#[tokio::test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn a_trunk_port_gets_a_tagged_trunk_that_goes_with_the_machine() {
    let env = Env::get();
    let f = Fixture::new("trunk").await;
    let manager = Manager::start(f.ns(), &[]).await;
    f.wait_cluster_provisioned(&manager).await;
    let mut s = good_spec();
    s["ports"] = json!([
        {"network": {"filter": {"name": "osdev-net"}}, "trunk": true},
        {"network": {"filter": {"name": "osdev-net"}}}
    ]);
    f.machine("t1", s, Some("t1-bootstrap")).await;
    f.wait_ready_reason("t1", "InstanceReady", &manager).await;
    let m = f.oswm("t1").await.unwrap();
    let server_id = m["status"]["instanceID"].as_str().unwrap().to_owned();

    // Neutron, as the admin sees it: one trunk, parented by the first port only, tagged.
    let ports = ports_tagged(&uid_tag(&m));
    assert_eq!(ports.len(), 2, "{ports:?}");
    let port_id = |name: &str| {
        ports
            .iter()
            .find(|p| p["Name"] == name)
            .unwrap_or_else(|| panic!("port {name} missing: {ports:?}"))["ID"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let trunks = openstack(&env.admin_cloud, &["network", "trunk", "list", "--long"]).unwrap();
    let ours: Vec<&Value> = trunks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["Parent Port"] == port_id("t1-0").as_str()
                || t["Parent Port"] == port_id("t1-1").as_str()
        })
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "exactly the trunk port has a trunk: {trunks}"
    );
    assert_eq!(ours[0]["Parent Port"], port_id("t1-0").as_str());
    let trunk_id = ours[0]["ID"].as_str().unwrap().to_owned();
    let trunk = openstack(&env.admin_cloud, &["network", "trunk", "show", &trunk_id]).unwrap();
    let tags = trunk["tags"].to_string();
    assert!(
        tags.contains(&uid_tag(&m)),
        "trunk tagged with the machine: {trunk}"
    );
    assert_eq!(
        m["status"]["resources"]["trunks"][0]["id"],
        trunk_id.as_str(),
        "{}",
        m["status"]
    );
    // The server uses both ports.
    let bound = openstack(
        &env.admin_cloud,
        &["port", "list", "--device-id", &server_id],
    )
    .unwrap();
    assert_eq!(bound.as_array().map(Vec::len), Some(2), "{bound}");

    // Delete: server, trunk and ports go.
    f.delete_and_wait("t1").await;
    assert!(
        servers_tagged(&uid_tag(&m)).is_empty(),
        "server left behind"
    );
    assert!(
        openstack_run(&env.admin_cloud, &["network", "trunk", "show", &trunk_id]).is_err(),
        "trunk {trunk_id} left behind"
    );
    assert!(ports_tagged(&uid_tag(&m)).is_empty(), "ports left behind");
    f.teardown(manager).await;
}

#[tokio::test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn a_crash_between_create_and_status_write_never_makes_a_second_server_or_port() {
    let f = Fixture::new("crash").await;

    // 1. The manager dies right after Nova accepted the server, before status.instanceID.
    let mut crashing = Manager::start(
        f.ns(),
        &["--fault-injection", "machine-after-server-create"],
    )
    .await;
    f.machine("m2", good_spec(), Some("m2-bootstrap")).await;
    let exit = crashing
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("manager exits at the fault point");
    assert_eq!(exit.code(), Some(75));
    let m = f.oswm("m2").await.unwrap();
    assert!(
        m["status"]["instanceID"].is_null(),
        "the crash happened before the status write: {}",
        m["status"]
    );
    let before = servers_tagged(&uid_tag(&m));
    assert_eq!(before.len(), 1, "{before:?}");

    let manager = Manager::start(f.ns(), &[]).await;
    f.wait_ready_reason("m2", "InstanceReady", &manager).await;
    let m = f.oswm("m2").await.unwrap();
    assert_eq!(
        m["status"]["instanceID"], before[0]["ID"],
        "the server was adopted, not recreated"
    );
    let after = servers_tagged(&uid_tag(&m));
    assert_eq!(after.len(), 1, "no second server: {after:?}");
    manager.stop().await;

    // 2. The manager dies right after Neutron created the port, before it is tagged. The
    //    manager after it runs with the default `--port-creation auto`: the machine keeps the
    //    way its port was first planned (capow's, in Neutron), so that port is adopted.
    let mut crashing = Manager::start(
        f.ns(),
        &[
            "--fault-injection",
            "machine-after-port-create",
            "--port-creation",
            "neutron",
        ],
    )
    .await;
    f.machine("m3", good_spec(), Some("m3-bootstrap")).await;
    crashing
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("manager exits at the fault point");
    let untagged = openstack(&Env::get().admin_cloud, &["port", "list", "--name", "m3-0"]).unwrap();
    assert_eq!(untagged.as_array().unwrap().len(), 1, "{untagged}");
    let m3 = f.oswm("m3").await.unwrap();
    assert!(
        ports_tagged(&uid_tag(&m3)).is_empty(),
        "the port was not tagged yet"
    );

    let manager = Manager::start(f.ns(), &[]).await;
    f.wait_ready_reason("m3", "InstanceReady", &manager).await;
    let ports = openstack(&Env::get().admin_cloud, &["port", "list", "--name", "m3-0"]).unwrap();
    assert_eq!(
        ports.as_array().unwrap().len(),
        1,
        "the untagged port was adopted, not duplicated: {ports}"
    );
    assert_eq!(ports_tagged(&uid_tag(&m3)).len(), 1, "and tagged");
    assert_eq!(servers_tagged(&uid_tag(&m3)).len(), 1);

    f.delete_and_wait("m2").await;
    f.delete_and_wait("m3").await;
    for m in [&m, &m3] {
        assert!(servers_tagged(&uid_tag(m)).is_empty());
        assert!(ports_tagged(&uid_tag(m)).is_empty());
    }
    f.teardown(manager).await;
}

#[tokio::test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn bad_input_is_reported_with_field_and_cause_and_deletes_nothing() {
    let f = Fixture::new("badinput").await;
    let manager = Manager::start(f.ns(), &[]).await;
    let cloud = Env::get().cloud.clone();

    // Identity problems.
    let mut missing_secret = good_spec();
    missing_secret["identityRef"] = json!({"name": "no-such-secret", "cloudName": cloud});
    apply_secret(
        &f.client,
        f.ns(),
        "malformed",
        &[("clouds.yaml", b"clouds: [")],
    )
    .await;
    let mut malformed = good_spec();
    malformed["identityRef"] = json!({"name": "malformed", "cloudName": cloud});
    // The environment's clouds.yaml is JSON (a YAML subset); change only the password.
    let mut clouds: Value = serde_json::from_str(&clouds_yaml_text()).expect("clouds.yaml is JSON");
    clouds["clouds"][&cloud]["auth"]["password"] = json!("not-the-password");
    let wrong_password = clouds.to_string();
    apply_secret(
        &f.client,
        f.ns(),
        "wrong-password",
        &[("clouds.yaml", wrong_password.as_bytes())],
    )
    .await;
    let mut bad_password = good_spec();
    bad_password["identityRef"] = json!({"name": "wrong-password", "cloudName": cloud});
    // Spec problems.
    let no_flavor = spec(
        json!({"filter": {"name": "no-such-flavor"}}),
        json!({"filter": {"name": "osdev-tiny"}}),
        json!({"filter": {"name": "osdev-net"}}),
    );
    let no_image = spec(
        json!({"filter": {"name": "m1.tiny"}}),
        json!({"id": "00000000-0000-0000-0000-000000000000"}),
        json!({"filter": {"name": "osdev-net"}}),
    );
    let no_network = spec(
        json!({"filter": {"name": "m1.tiny"}}),
        json!({"filter": {"name": "osdev-tiny"}}),
        json!({"filter": {"name": "no-such-network"}}),
    );

    // (name, spec, bootstrap Secret, expected Ready reason, words the message must contain)
    type Case<'a> = (&'a str, Value, Option<&'a str>, &'a str, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "no-secret",
            missing_secret,
            Some("no-secret-bootstrap"),
            "InvalidIdentity",
            &["spec.identityRef", "no-such-secret", "does not exist"],
        ),
        (
            "malformed",
            malformed,
            Some("malformed-bootstrap"),
            "InvalidIdentity",
            &["spec.identityRef", "clouds.yaml does not parse"],
        ),
        (
            "bad-password",
            bad_password,
            Some("bad-password-bootstrap"),
            "OpenStackAuthenticationFailed",
            &["token_issue", "401"],
        ),
        (
            "no-flavor",
            no_flavor,
            Some("no-flavor-bootstrap"),
            "InvalidMachineSpec",
            &["spec.flavor.filter.name", "no-such-flavor"],
        ),
        (
            "no-image",
            no_image,
            Some("no-image-bootstrap"),
            "InvalidMachineSpec",
            &["spec.image.id", "does not exist"],
        ),
        (
            "no-network",
            no_network,
            Some("no-network-bootstrap"),
            "InvalidMachineSpec",
            &[
                "spec.ports[0].network.filter",
                "no network matches the filter name=no-such-network",
            ],
        ),
        (
            "no-bootstrap",
            good_spec(),
            None,
            "WaitingForBootstrapData",
            &["no-bootstrap-bootstrap", "does not exist"],
        ),
    ];
    for (name, spec, bootstrap, _, _) in &cases {
        f.machine(name, spec.clone(), *bootstrap).await;
    }
    for (name, _, _, reason, words) in &cases {
        let c = f.wait_ready_reason(name, reason, &manager).await;
        assert_eq!(c["status"], "False", "{name}: {c}");
        let message = c["message"].as_str().unwrap();
        for debug in ["Some(", "None", "Status {", "ApiError", " {:?}"] {
            assert!(
                !message.contains(debug),
                "{name}: condition message {message:?} carries a Debug form ({debug})"
            );
        }
        for w in *words {
            assert!(
                message.contains(w),
                "{name}: condition message {message:?} lacks {w:?}"
            );
        }
        // The controller writes the status first and the event after it
        // (src/controllers/machine/mod.rs), so the event may trail the condition just seen.
        Poll::new(
            format!("{name}: an event with reason {reason} naming {words:?}"),
            Duration::from_secs(30),
        )
        .until(|| async {
            let events = f.events_for(name).await;
            if events
                .iter()
                .any(|(_, r, n)| r == reason && words.iter().all(|w| n.contains(w)))
            {
                Ok(())
            } else {
                Err(format!("events {events:?}"))
            }
        })
        .await;
        let m = f.oswm(name).await.unwrap();
        assert!(
            servers_tagged(&uid_tag(&m)).is_empty(),
            "{name}: a server was created"
        );
        assert!(
            ports_tagged(&uid_tag(&m)).is_empty(),
            "{name}: a port was created"
        );
    }

    // A running machine whose credentials break keeps its server, and recovers.
    f.machine("running", good_spec(), Some("running-bootstrap"))
        .await;
    f.wait_ready_reason("running", "InstanceReady", &manager)
        .await;
    let running = f.oswm("running").await.unwrap();
    let server_id = running["status"]["instanceID"].as_str().unwrap().to_owned();
    apply_secret(
        &f.client,
        f.ns(),
        IDENTITY,
        &[("clouds.yaml", wrong_password.as_bytes())],
    )
    .await;
    f.touch("running").await;
    f.wait_ready_reason("running", "OpenStackAuthenticationFailed", &manager)
        .await;
    assert_eq!(
        server_show(&server_id)["status"],
        "ACTIVE",
        "the server survives bad credentials"
    );
    let running = f.oswm("running").await.unwrap();
    assert_eq!(
        running["status"]["initialization"]["provisioned"], true,
        "provisioned is never reset"
    );
    apply_secret(
        &f.client,
        f.ns(),
        IDENTITY,
        &[("clouds.yaml", clouds_yaml_text().as_bytes())],
    )
    .await;
    f.touch("running").await;
    f.wait_ready_reason("running", "InstanceReady", &manager)
        .await;
    assert_eq!(
        f.oswm("running").await.unwrap()["status"]["instanceID"],
        server_id.as_str()
    );

    // Objects with bad input are deletable (nothing was created), the good one cleans up.
    for (name, ..) in &cases {
        f.delete_and_wait(name).await;
    }
    f.delete_and_wait("running").await;
    assert!(servers_tagged(&uid_tag(&running)).is_empty());
    f.teardown(manager).await;
}

#[tokio::test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn a_server_in_error_reports_novas_fault_and_is_kept() {
    let env = Env::get();
    // A flavor with more RAM (850000 MiB) than any fake compute has (800000 MiB) but inside
    // the demo project's RAM quota (1024000 MiB): Nova accepts the server, the scheduler puts
    // it in ERROR with "No valid host was found" (e2e/openstack/NOTES.md, failure modes).
    let flavor = "capow-e2e-novalidhost";
    let ram = openstack(&env.admin_cloud, &["flavor", "show", flavor])
        .ok()
        .and_then(|f| f["ram"].as_u64());
    if ram != Some(850_000) {
        let _ = openstack_run(&env.admin_cloud, &["flavor", "delete", flavor]);
        openstack(
            &env.admin_cloud,
            &[
                "flavor", "create", "--ram", "850000", "--vcpus", "1", "--disk", "1", flavor,
            ],
        )
        .expect("create the flavor");
    }
    let f = Fixture::new("novalidhost").await;
    let manager = Manager::start(f.ns(), &[]).await;
    let s = spec(
        json!({"filter": {"name": flavor}}),
        json!({"filter": {"name": "osdev-tiny"}}),
        json!({"filter": {"name": "osdev-net"}}),
    );
    f.machine("big", s, Some("big-bootstrap")).await;
    f.wait_ready_reason("big", "InstanceStateError", &manager)
        .await;
    Poll::new(
        "Nova's fault in the Ready condition",
        Duration::from_secs(30),
    )
    .until(|| async {
        let c = f.ready("big").await.unwrap();
        if c["message"]
            .as_str()
            .unwrap()
            .contains("No valid host was found")
        {
            Ok(())
        } else {
            Err(format!("condition {c}"))
        }
    })
    .await;
    let events = f.events_for("big").await;
    assert!(
        events.iter().any(|(t, r, n)| t == "Warning"
            && r == "InstanceStateError"
            && n.contains("No valid host")),
        "{events:?}"
    );
    let m = f.oswm("big").await.unwrap();
    let tagged = servers_tagged(&uid_tag(&m));
    assert_eq!(
        tagged.len(),
        1,
        "the ERROR server is kept for inspection, not deleted or replaced"
    );
    assert_eq!(tagged[0]["Status"], "ERROR");
    f.delete_and_wait("big").await;
    assert!(servers_tagged(&uid_tag(&m)).is_empty());
    assert!(ports_tagged(&uid_tag(&m)).is_empty());
    f.teardown(manager).await;
}

#[tokio::test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn the_api_server_rejects_invalid_specs() {
    let f = Fixture::new("schema").await;
    let base = json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachine",
                      "metadata": {"name": "x", "namespace": f.ns()}});
    let cases = [
        (
            json!({"flavor": {"id": "1", "filter": {"name": "m1.tiny"}}, "image": {"id": "i"}}),
            "exactly one of id or filter must be set",
        ),
        (
            json!({"flavor": {"id": "1"}, "image": {"filter": {}}}),
            "at least one of name or tags must be set",
        ),
        (
            json!({"flavor": {"id": "1"}, "image": {"id": "i"}, "tags": ["a/b"]}),
            "spec.tags[0]",
        ),
        (
            json!({"flavor": {"id": "1"}, "image": {"id": "i"}, "serverMetadata": [{"key": "capow-cluster", "value": "x"}]}),
            "keys starting with 'capow-' are reserved",
        ),
        (
            json!({"flavor": {"id": "1"}, "image": {"id": "i"}, "identityRef": {"name": "", "cloudName": "c"}}),
            "name must not be empty",
        ),
        // Ownership tags: with one of these another machine would adopt this server.
        (
            json!({"flavor": {"id": "1"}, "image": {"id": "i"}, "tags": ["capow-machine-uid=0b9e2f4a"]}),
            "reserved for capow's ownership tags",
        ),
        (
            json!({"flavor": {"id": "1"}, "image": {"id": "i"}, "tags": ["capow"]}),
            "reserved for capow's ownership tags",
        ),
        (
            json!({"flavor": {"id": "1"}, "image": {"id": "i"}, "ports": [{"tags": ["capow-cluster-uid=x"]}]}),
            "reserved for capow's ownership tags",
        ),
    ];
    for (spec, want) in cases {
        let mut obj = base.clone();
        obj["spec"] = spec.clone();
        let err = apply_json(&f.client, &obj)
            .await
            .expect_err(&format!("{spec} must be rejected"));
        assert!(err.to_string().contains(want), "{spec}: {err}");
    }
    // providerID is immutable once set.
    let mut obj = base.clone();
    obj["spec"] =
        json!({"flavor": {"id": "1"}, "image": {"id": "i"}, "providerID": "openstack:///a"});
    apply_json(&f.client, &obj).await.expect("valid object");
    obj["spec"]["providerID"] = json!("openstack:///b");
    let err = apply_json(&f.client, &obj)
        .await
        .expect_err("providerID change must be rejected");
    assert!(err.to_string().contains("providerID is immutable"), "{err}");
    f.ns.delete().await;
}
