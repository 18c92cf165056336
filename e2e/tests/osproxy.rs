//! The `osproxy` program (`e2e/src/bin/osproxy.rs`): as a process in front of the fake cloud of
//! `capow_e2e::osproxy::fake` (no OpenStack needed), and in front of the real e2e OpenStack
//! (ignored: run with `e2e/test.sh`, or `source e2e/dev-env.sh` and `--include-ignored`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::Path;

use capow::openstack::network::ListFilter;
use capow::openstack::{ClientOptions, CloudConfig, Metrics, Session};
use capow_e2e::osproxy::fake::FakeCloud;
use capow_e2e::osproxy::{self, Config, FaultSet, Proxy, ProxyProcess};
use capow_e2e::{Env, clouds_yaml_text};
use serde_json::{Value, json};

fn session(clouds_yaml: &str, cloud: &str, max_retries: u32) -> Session {
    let config = CloudConfig::from_clouds_yaml(clouds_yaml, cloud, None).unwrap();
    let options = ClientOptions {
        max_retries,
        ..ClientOptions::default()
    };
    Session::new(config, None, options, Metrics::default()).unwrap()
}

#[tokio::test]
async fn the_program_forwards_counts_and_takes_faults_at_run_time() {
    let cloud = FakeCloud::start().await;
    let dir = std::env::temp_dir().join(format!("capow-osproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (clouds, proxied) = (dir.join("clouds.yaml"), dir.join("proxied.yaml"));
    std::fs::write(&clouds, cloud.clouds_yaml()).unwrap();
    let fault =
        json!({"service": "compute", "method": "GET", "fault": {"kind": "status", "code": 503}});
    let proxy = ProxyProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_osproxy")),
        &[
            "--clouds-yaml",
            clouds.to_str().unwrap(),
            "--cloud",
            "fake",
            "--seed",
            "3",
            "--fault",
            &fault.to_string(),
            "--write-clouds-yaml",
            proxied.to_str().unwrap(),
            "--exit-after",
            "10m",
        ],
    )
    .await
    .unwrap();
    assert_eq!(proxy.auth_url, format!("{}/v3", proxy.url));
    let yaml = std::fs::read_to_string(&proxied).unwrap();
    assert_eq!(
        osproxy::auth_url_of(&proxied, "fake").unwrap(),
        proxy.auth_url
    );

    // capow's client, through the program: networks pass, the compute GET gets the 503.
    let s = session(&yaml, "fake", 0);
    assert!(
        s.network()
            .list_networks(&ListFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    let err = s.compute().list_servers_by_tags(&["t"]).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");

    let control = proxy.control();
    let c = control.counts().await.unwrap();
    assert_eq!(c.seed, 3);
    assert_eq!(c.operation("identity", "POST /auth/tokens"), 1, "{c:#?}");
    assert_eq!(c.operation("network", "GET /networks"), 1);
    assert_eq!(c.responses("compute", "503"), 1);
    assert_eq!(c.faults[0].stats.injected, 1);
    assert_eq!(cloud.count("compute", "GET", "/servers/detail"), 0);

    // Faults off at run time: the same call passes.
    control.set_faults(&FaultSet::default()).await.unwrap();
    assert!(
        s.compute()
            .list_servers_by_tags(&["t"])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(cloud.count("compute", "GET", "/servers/detail"), 1);
    proxy.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn lists_servers_and_networks_of_the_real_cloud_through_the_proxy() {
    let env = Env::get();
    let auth_url = osproxy::auth_url_of(&env.clouds_yaml, &env.cloud).unwrap();
    let proxy = Proxy::start(Config::new(&auth_url)).await.unwrap();
    let yaml = proxy.clouds_yaml(&clouds_yaml_text(), &env.cloud).unwrap();

    // A token issued through the proxy with the cloud's credentials: every catalog URL points
    // back at the proxy.
    let parsed: Value = serde_yaml::from_str(&yaml).unwrap();
    let auth = &parsed["clouds"][&env.cloud]["auth"];
    let body = capow_e2e::cloud::password_auth(auth);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/auth/tokens", proxy.auth_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let subject = resp.headers()["x-subject-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let token: Value = resp.json().await.unwrap();
    let catalog = token["token"]["catalog"].as_array().unwrap();
    let mut types: Vec<&str> = catalog.iter().filter_map(|s| s["type"].as_str()).collect();
    types.sort_unstable();
    for t in [
        "block-storage",
        "compute",
        "identity",
        "image",
        "network",
        "placement",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    for url in catalog
        .iter()
        .flat_map(|s| s["endpoints"].as_array().unwrap())
        .map(|e| e["url"].as_str().unwrap())
    {
        assert!(url.starts_with(&format!("{}/", proxy.url())), "{url}");
    }

    // capow's client finds Nova and Neutron through the rewritten catalog.
    let s = session(&yaml, &env.cloud, 3);
    s.compute()
        .list_servers_by_tags(&["capow-osproxy-none"])
        .await
        .unwrap();
    let networks = s
        .network()
        .list_networks(&ListFilter::default())
        .await
        .unwrap();
    assert!(
        networks.iter().any(|n| n.name == "osdev-net"),
        "{networks:?}"
    );

    let c = proxy.counts();
    println!("{}", serde_json::to_string_pretty(&c).unwrap());
    assert_eq!(c.operation("identity", "POST /auth/tokens"), 2, "{c:#?}");
    assert_eq!(c.operation("compute", "GET /servers/detail"), 1);
    assert_eq!(c.operation("network", "GET /networks"), 1);
    assert_eq!(c.total, 4);
    assert_eq!(c.responses("identity", "201"), 2);
    assert_eq!(
        c.responses("compute", "200") + c.responses("network", "200"),
        2
    );

    // What the proxy adds to a small Neutron GET (recorded, not asserted): 20 sequential GETs
    // each way, alternating.
    let via = catalog
        .iter()
        .find(|s| s["type"] == "network")
        .and_then(|s| s["endpoints"][0]["url"].as_str())
        .unwrap()
        .to_owned();
    let direct = via.replacen(&format!("{}/_/", proxy.url()), "http://", 1);
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..20 {
        for (i, base) in [&direct, &via].into_iter().enumerate() {
            let started = std::time::Instant::now();
            let resp = http
                .get(format!("{base}/v2.0/networks"))
                .header("x-auth-token", &subject)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap();
            times[i].push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (d, p) = (median(&mut times[0]), median(&mut times[1]));
    env.record(&format!(
        "osproxy: GET /v2.0/networks median of 20, direct {d:.1} ms, through the proxy {p:.1} ms"
    ));
    assert_eq!(proxy.counts().operation("network", "GET /networks"), 21);
    proxy.stop().await;
}
