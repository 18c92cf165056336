//! capow's container image as `e2e/image.sh` builds it (the static musl release binary packed
//! by crane; the repository's `Dockerfile` builds the same files, user, entrypoint and labels):
//! the OCI image layout (<https://github.com/opencontainers/image-spec/blob/v1.1.1/image-layout.md>)
//! parses, every blob matches its digest, and for every platform in it (one, or amd64 and arm64
//! with `--platform`) the config runs `/usr/local/bin/capow` as 65532:65532 with the OCI labels
//! and the one layer holds only the binary (for that architecture, without a dynamic loader), a
//! CA bundle and the user database (no shell, no package manager). This machine's binary, taken
//! from the layer, prints the version the generated manifests name as the image tag and itself
//! generates manifests that name the same image. The `docker load` archive carries the same
//! config under the manifests' image name.
//!
//! The image name comes from the committed generated files (`config/manager/manager.yaml`,
//! `templates/infrastructure-components.yaml`, `charts/capow/values.yaml`), never from this
//! file. Needs `e2e/image.sh` to have run (e2e/test.sh runs it); `CAPOW_E2E_IMAGE_DIR`
//! overrides where the image is read from (default `$CARGO_TARGET_DIR/image`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use capow::manifests;
use serde_json::Value;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn image_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CAPOW_E2E_IMAGE_DIR") {
        return dir.into();
    }
    std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| repo().join("target"), PathBuf::from)
        .join("image")
}

/// The architecture as OCI platforms name it.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The image a generated Deployment names: the default of `${CAPOW_IMAGE:=...}`.
fn deployment_image(yaml: &str, path: &str) -> String {
    let images: Vec<String> = yaml
        .split("---\n")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(images.len(), 1, "{path}: one Deployment");
    images[0]
        .strip_prefix("${CAPOW_IMAGE:=")
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or_else(|| panic!("{path}: {} is not ${{CAPOW_IMAGE:=...}}", images[0]))
        .to_owned()
}

/// The image every generated place names; they must agree.
fn manifests_image(root: &Path) -> String {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let manager = deployment_image(
        &read("config/manager/manager.yaml"),
        "config/manager/manager.yaml",
    );
    let components = deployment_image(
        &read("templates/infrastructure-components.yaml"),
        "templates/infrastructure-components.yaml",
    );
    let values: Value = serde_yaml::from_str(&read("charts/capow/values.yaml")).unwrap();
    let chart = format!(
        "{}:{}",
        values["image"]["repository"].as_str().unwrap(),
        values["image"]["tag"].as_str().unwrap()
    );
    assert_eq!(manager, components);
    assert_eq!(manager, chart, "charts/capow/values.yaml");
    manager
}

/// A blob of the layout, checked against its descriptor's digest and size.
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().unwrap();
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("{digest}: not sha256"));
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(
        bytes.len() as u64,
        descriptor["size"].as_u64().unwrap(),
        "{digest}"
    );
    assert_eq!(sha256(&bytes), digest, "blob content");
    bytes
}

fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Every image manifest of an index, following nested indexes, with the architecture its
/// descriptor names (`None` when the descriptor has no platform, as for a one-platform layout).
fn image_manifests(layout: &Path, index: &Value) -> Vec<(Option<String>, Value)> {
    let mut out = Vec::new();
    for d in index["manifests"].as_array().unwrap() {
        let json: Value = serde_json::from_slice(&blob(layout, d)).unwrap();
        match d["mediaType"].as_str().unwrap() {
            OCI_INDEX => {
                assert_eq!(json["mediaType"], OCI_INDEX);
                out.extend(image_manifests(layout, &json));
            }
            OCI_MANIFEST => {
                if !d["platform"].is_null() {
                    assert_eq!(d["platform"]["os"], "linux");
                }
                let arch = d["platform"]["architecture"].as_str().map(str::to_owned);
                out.push((arch, json));
            }
            other => panic!("unexpected media type {other}"),
        }
    }
    out
}

/// True when the ELF file asks for no program interpreter (dynamic loader): it runs on an
/// empty base. ELF64 little-endian layout, <https://refspecs.linuxfoundation.org/elf/gabi4+/ch5.pheader.html>.
fn elf_without_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "ELF64");
    assert_eq!(elf[5], 1, "little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) != PT_INTERP
    })
}

/// The ELF `e_machine` of each OCI architecture (<https://refspecs.linuxfoundation.org/elf/gabi4+/ch4.eheader.html>).
fn elf_machine(arch: &str) -> u16 {
    match arch {
        "amd64" => 62,
        "arm64" => 183,
        other => panic!("no ELF machine known for {other}"),
    }
}

struct Entry {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    data: Vec<u8>,
}

/// One platform's image, checked: manifest, config (platform, user, entrypoint, labels, diff
/// ID) and the layer's contents (only the binary, for this architecture and without a dynamic
/// loader, a CA bundle and the user database, all root-owned). Returns the architecture, the
/// config's digest and the binary.
fn check_image(
    layout: &Path,
    named_arch: Option<&str>,
    manifest: &Value,
    version: &str,
) -> (String, String, Vec<u8>) {
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], OCI_CONFIG);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    assert_eq!(layers[0]["mediaType"], OCI_LAYER_GZIP);

    // The config: platform, user, entrypoint, labels, the layer's diff ID.
    let config: Value = serde_json::from_slice(&blob(layout, &manifest["config"])).unwrap();
    assert_eq!(config["os"], "linux");
    let arch = config["architecture"].as_str().unwrap().to_owned();
    if let Some(named) = named_arch {
        assert_eq!(
            arch, named,
            "the index and the config agree on the platform"
        );
    }
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532", "{arch}: non-root user and group");
    let entrypoint: Vec<&str> = c["Entrypoint"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(entrypoint, ["/usr/local/bin/capow"], "{arch}");
    assert!(
        c["Cmd"].is_null(),
        "{arch}: no Cmd: Kubernetes passes `manager ...`"
    );
    let labels = &c["Labels"];
    for (key, want) in [
        ("org.opencontainers.image.title", "capow"),
        ("org.opencontainers.image.version", version),
        ("org.opencontainers.image.source", manifests::SOURCE),
        ("org.opencontainers.image.licenses", manifests::LICENSE),
    ] {
        assert_eq!(labels[key], want, "{arch}: label {key}");
    }
    assert!(
        labels["org.opencontainers.image.description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
    assert_eq!(config["rootfs"]["type"], "layers");

    // The layer: exactly the binary, the CA bundle and the user database, root-owned.
    let gz = blob(layout, &layers[0]);
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut tar_bytes)
        .unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([sha256(&tar_bytes)]),
        "{arch}: diff ID of the uncompressed layer"
    );
    let mut entries = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned();
        let h = e.header();
        let (kind, mode, uid, gid) = (
            h.entry_type(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
        );
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        entries.insert(
            path,
            Entry {
                kind,
                mode,
                uid,
                gid,
                data,
            },
        );
    }
    let files: Vec<&str> = entries
        .iter()
        .filter(|(_, e)| !e.kind.is_dir())
        .map(|(p, _)| p.as_str())
        .collect();
    assert_eq!(
        files,
        [
            "etc/group",
            "etc/passwd",
            "etc/ssl/certs/ca-certificates.crt",
            "usr/local/bin/capow"
        ],
        "{arch}: no shell, no package manager, nothing else"
    );
    assert!(entries.values().all(|e| e.uid == 0 && e.gid == 0));
    assert_eq!(entries["tmp"].mode & 0o7777, 0o1777);
    let text = |p: &str| String::from_utf8(entries[p].data.clone()).unwrap();
    assert!(
        text("etc/passwd")
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{}",
        text("etc/passwd")
    );
    assert!(text("etc/group").lines().any(|l| l == "nonroot:x:65532:"));
    let certs = text("etc/ssl/certs/ca-certificates.crt")
        .matches("-----BEGIN CERTIFICATE-----")
        .count();
    assert!(certs > 50, "CA bundle with {certs} certificates");
    let bin = entries.remove("usr/local/bin/capow").unwrap();
    assert!(bin.kind.is_file());
    assert_eq!(bin.mode & 0o7777, 0o755);
    assert_eq!(
        u16::from_le_bytes([bin.data[0x12], bin.data[0x13]]),
        elf_machine(&arch),
        "the binary is built for {arch}"
    );
    assert!(
        elf_without_interpreter(&bin.data),
        "{arch}: capow asks for a dynamic loader; an empty base has none"
    );
    let digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    (arch, digest, bin.data)
}

#[test]
#[ignore = "needs the image: run e2e/image.sh (e2e/test.sh does)"]
fn the_image_runs_the_static_capow_the_manifests_name_as_nonroot() {
    let root = repo();
    let image = manifests_image(&root);
    let (repository, tag) = image.rsplit_once(':').unwrap();
    assert!(!repository.is_empty());
    let version = tag
        .strip_prefix('v')
        .unwrap_or_else(|| panic!("tag {tag} is not v<version>"));
    assert_eq!(
        version,
        manifests::VERSION,
        "the manifests' tag is Cargo.toml's version"
    );

    let dir = image_dir();
    assert!(
        dir.join("oci").is_dir(),
        "{} has no image: run e2e/image.sh",
        dir.display()
    );
    let info = std::fs::read_to_string(dir.join("image.txt")).unwrap();
    assert_eq!(info.lines().next(), Some(image.as_str()), "image.txt");

    // The layout and every platform's image in it.
    let layout = dir.join("oci");
    let marker: Value =
        serde_json::from_slice(&std::fs::read(layout.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(marker["imageLayoutVersion"], "1.0.0");
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    let images = image_manifests(&layout, &index);
    assert!(!images.is_empty());
    let mut host = None;
    let mut archs = Vec::new();
    for (named, manifest) in &images {
        let (arch, config_digest, bin) = check_image(&layout, named.as_deref(), manifest, version);
        if arch == oci_arch() {
            host = Some((config_digest, bin));
        }
        archs.push(arch);
    }
    archs.sort();
    archs.dedup();
    assert_eq!(
        archs.len(),
        images.len(),
        "one image per platform: {archs:?}"
    );
    let (config_digest, bin) =
        host.unwrap_or_else(|| panic!("no linux/{} image among {archs:?}", oci_arch()));

    // This platform's binary, taken from the layer, runs and names the same version and image.
    let work = dir.join("test-run");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let exe = work.join("capow");
    std::fs::write(&exe, &bin).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = std::process::Command::new(&exe)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("capow {version}\n")
    );
    let generated = work.join("manifests");
    let out = std::process::Command::new(&exe)
        .args(["manifests", "--output-dir"])
        .arg(&generated)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        manifests_image(&generated),
        image,
        "the image's own capow names the image"
    );
    std::fs::remove_dir_all(&work).unwrap();

    // The `docker load` archive: this platform's config, tagged with the manifests' image.
    let archive_path = dir.join(format!("capow-linux-{}.tar", oci_arch()));
    let mut docker = tar::Archive::new(std::fs::File::open(&archive_path).unwrap());
    let mut docker_files = BTreeMap::new();
    for e in docker.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        docker_files.insert(path, data);
    }
    let saved: Value = serde_json::from_slice(&docker_files["manifest.json"]).unwrap();
    assert_eq!(saved.as_array().unwrap().len(), 1);
    assert_eq!(saved[0]["RepoTags"], serde_json::json!([image]));
    let saved_config = &docker_files[saved[0]["Config"].as_str().unwrap()];
    assert_eq!(
        sha256(saved_config),
        config_digest,
        "the archive holds the layout's image"
    );
}
