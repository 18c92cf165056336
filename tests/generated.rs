//! Generated files must match their generators: everything `capow manifests --output-dir .`
//! writes (config/crd, config/rbac, config/manager, config/default, templates/metadata.yaml,
//! templates/infrastructure-components.yaml) is committed exactly as generated.
//! Regenerate with `cargo run -- manifests --output-dir .`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::Path;

#[test]
fn committed_manifests_match_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for (path, content) in capow::runtime::manifests::files().unwrap() {
        match std::fs::read_to_string(root.join(&path)) {
            Ok(on_disk) if on_disk == content => {}
            _ => stale.push(path),
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated files {stale:?}: run `cargo run -- manifests --output-dir .`"
    );
    // No CRD file that the generator does not write.
    let generated: Vec<String> = capow::runtime::crd_files()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for entry in std::fs::read_dir(root.join("config/crd/bases")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            generated.contains(&name),
            "config/crd/bases/{name} is not generated"
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
