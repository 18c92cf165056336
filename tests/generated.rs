//! Generated files must match their generators: everything `capow manifests --output-dir .`
//! writes (config/crd, config/rbac, config/manager, config/default, templates/metadata.yaml,
//! templates/infrastructure-components.yaml, the generated parts of charts/capow and
//! clusterstack/) is committed exactly as generated, naming the default image.
//! Regenerate with `cargo run -- manifests --output-dir .`. The hand-written `Dockerfile`
//! carries the same version, source and license as `Cargo.toml`.

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
    for (path, content) in capow::manifests::files().unwrap() {
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
    let generated: Vec<String> = capow::manifests::crd_files()
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

#[test]
fn committed_manifests_name_one_image_and_the_chart_the_crate_version() {
    use capow::manifests::{Image, VERSION};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let image = Image::default();
    let want = format!("image: ${{CAPOW_IMAGE:={image}}}");
    for path in [
        "config/manager/manager.yaml",
        "templates/infrastructure-components.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(path)).unwrap();
        let images: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("CAPOW_IMAGE"))
            .collect();
        assert_eq!(images, [want.as_str()], "{path}");
    }
    let values: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("charts/capow/values.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(values["image"]["repository"], image.repository.as_str());
    assert_eq!(values["image"]["tag"], image.tag.as_str());
    let chart: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("charts/capow/Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(chart["appVersion"], VERSION);
    assert_eq!(chart["version"], VERSION);
}

/// The `Dockerfile`'s build argument `VERSION` and its labels, as `Cargo.toml` says; and the final
/// stage is an empty base running the binary as 65532:65532.
#[test]
fn the_dockerfile_labels_the_image_as_cargo_toml_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    // Instructions with their continuation lines joined, comments dropped.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(
        instructions.contains(&format!("ARG VERSION={}", env!("CARGO_PKG_VERSION"))),
        "Dockerfile: ARG VERSION={} (Cargo.toml's version)",
        env!("CARGO_PKG_VERSION")
    );
    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .unwrap();
    let last: Vec<&str> = instructions[last_from..]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(last[0], "FROM scratch");
    assert!(last.contains(&"USER 65532:65532"), "{last:?}");
    assert!(
        last.contains(&r#"ENTRYPOINT ["/usr/local/bin/capow"]"#),
        "{last:?}"
    );
    let label = last
        .iter()
        .find(|i| i.starts_with("LABEL "))
        .expect("a LABEL in the final stage");
    for (key, value) in [
        ("org.opencontainers.image.title", "capow"),
        (
            "org.opencontainers.image.description",
            env!("CARGO_PKG_DESCRIPTION"),
        ),
        ("org.opencontainers.image.source", capow::manifests::SOURCE),
        ("org.opencontainers.image.version", "${VERSION}"),
        (
            "org.opencontainers.image.licenses",
            capow::manifests::LICENSE,
        ),
    ] {
        assert!(
            label.contains(&format!("{key}=\"{value}\"")),
            "Dockerfile: {key}=\"{value}\" missing in {label}"
        );
    }
}
