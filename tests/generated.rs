//! Generated files must match their generators: `config/crd/bases/` is exactly what
//! `capow crd --output-dir config/crd/bases` writes.
//! Regenerate with `cargo run -- crd --output-dir config/crd/bases`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/crd/bases");
    let generated = capow::runtime::crd_files().unwrap();
    let mut committed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    committed.sort();
    let mut names: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(
        committed, names,
        "config/crd/bases has other files than the generator writes"
    );
    for (name, yaml) in generated {
        let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(
            on_disk == yaml,
            "config/crd/bases/{name} is stale: run `cargo run -- crd --output-dir config/crd/bases`"
        );
    }
}

#[test]
fn crds_carry_the_capi_contract_and_provider_labels() {
    for crd in capow::api::crds() {
        let labels = crd.metadata.labels.unwrap();
        assert_eq!(
            labels.get("cluster.x-k8s.io/v1beta2").map(String::as_str),
            Some("v1alpha1")
        );
        assert_eq!(
            labels.get("cluster.x-k8s.io/provider").map(String::as_str),
            Some("infrastructure-openstack-workers")
        );
        let version = &crd.spec.versions[0];
        assert!(version.served && version.storage);
        assert_eq!(crd.spec.scope, "Namespaced");
    }
}
