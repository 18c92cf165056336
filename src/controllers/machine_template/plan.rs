//! Pure part of the template controller: what one machine of a flavor and image offers, in the
//! shape of the CAPI opt-in autoscale-from-zero contract (`status.capacity`, `status.nodeInfo`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::machine_template::NodeInfo;
use crate::openstack::compute::Flavor;
use crate::openstack::image::Image;

/// GPU resource name used when the flavor does not name one (extra spec `capow:gpu-resource`).
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Flavor extra spec naming the Kubernetes resource of the flavor's GPUs.
pub const GPU_RESOURCE_EXTRA_SPEC: &str = "capow:gpu-resource";
/// Flavor extra spec with the price of one server per hour (decimal).
pub const PRICE_EXTRA_SPEC: &str = "capow:price-per-hour";
/// Template annotation with the price of one machine per hour (overrides the flavor's).
pub const PRICE_ANNOTATION: &str = "capow.infrastructure.cluster.x-k8s.io/price-per-hour";

/// Number of GPUs a flavor passes to its servers: the counts of `pci_passthrough:alias`
/// (`alias:count[,alias:count]`) plus the placement resources `resources:VGPU` and
/// `resources:PGPU` (Nova flavor extra specs reference).
pub fn gpu_count(flavor: &Flavor) -> u32 {
    let mut count = 0u32;
    if let Some(aliases) = flavor.extra_specs.get("pci_passthrough:alias") {
        for entry in aliases.split(',') {
            let n = entry.rsplit_once(':').map_or("1", |(_, n)| n);
            count = count.saturating_add(n.trim().parse().unwrap_or(0));
        }
    }
    for key in ["resources:VGPU", "resources:PGPU"] {
        if let Some(n) = flavor.extra_specs.get(key) {
            count = count.saturating_add(n.trim().parse().unwrap_or(0));
        }
    }
    count
}

/// GPU model of a flavor with GPUs: extra spec `capow:gpu-type`, else the first
/// `pci_passthrough:alias` name, else `vgpu`/`pgpu` for placement GPU resources.
pub fn gpu_type(flavor: &Flavor) -> Option<String> {
    if gpu_count(flavor) == 0 {
        return None;
    }
    if let Some(t) = flavor
        .extra_specs
        .get("capow:gpu-type")
        .filter(|t| !t.is_empty())
    {
        return Some(t.clone());
    }
    if let Some(alias) = flavor
        .extra_specs
        .get("pci_passthrough:alias")
        .and_then(|a| a.split(',').next())
        .map(|a| a.split(':').next().unwrap_or(a).trim().to_owned())
        .filter(|a| !a.is_empty())
    {
        return Some(alias);
    }
    if flavor.extra_specs.contains_key("resources:VGPU") {
        Some("vgpu".into())
    } else {
        Some("pgpu".into())
    }
}

/// Kubernetes architecture of an image from `hw_architecture` or `architecture` (Glance
/// common image properties); `None` when neither is set or the value is unknown.
pub fn architecture(image: &Image) -> Option<String> {
    let raw = image
        .property("hw_architecture")
        .or_else(|| image.property("architecture"))?;
    let arch = match raw.to_ascii_lowercase().as_str() {
        "x86_64" | "amd64" | "x86-64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "ppc64le" | "ppc64el" => "ppc64le",
        "s390x" => "s390x",
        _ => return None,
    };
    Some(arch.to_owned())
}

/// Capacity of one machine: `cpu` = vCPUs, `memory` = RAM in `Mi`, `ephemeral-storage` = the
/// root disk in `Gi` (`root_volume_gib` when booting from a volume, else the flavor's disk;
/// omitted when both are 0), and GPUs.
pub fn capacity(flavor: &Flavor, root_volume_gib: Option<i32>) -> BTreeMap<String, Quantity> {
    let mut out = BTreeMap::new();
    out.insert("cpu".to_owned(), Quantity(flavor.vcpus.to_string()));
    out.insert("memory".to_owned(), Quantity(format!("{}Mi", flavor.ram)));
    let disk = root_volume_gib
        .map(i64::from)
        .filter(|d| *d > 0)
        .unwrap_or(flavor.disk as i64);
    if disk > 0 {
        out.insert(
            "ephemeral-storage".to_owned(),
            Quantity(format!("{disk}Gi")),
        );
    }
    let gpus = gpu_count(flavor);
    if gpus > 0 {
        let resource = flavor
            .extra_specs
            .get(GPU_RESOURCE_EXTRA_SPEC)
            .cloned()
            .unwrap_or_else(|| DEFAULT_GPU_RESOURCE.to_owned());
        out.insert(resource, Quantity(gpus.to_string()));
    }
    out
}

/// `status.nodeInfo` from the image: architecture and `os_type` (default `linux`).
pub fn node_info(image: &Image) -> NodeInfo {
    NodeInfo {
        architecture: architecture(image),
        operating_system: Some(
            image
                .property("os_type")
                .unwrap_or("linux")
                .to_ascii_lowercase(),
        ),
    }
}

/// Price per hour: the template annotation wins over the flavor's extra spec; only values
/// that parse as a non-negative number count.
pub fn price(flavor: &Flavor, annotations: &BTreeMap<String, String>) -> Option<String> {
    [
        annotations.get(PRICE_ANNOTATION),
        flavor.extra_specs.get(PRICE_EXTRA_SPEC),
    ]
    .into_iter()
    .flatten()
    .map(|p| p.trim().to_owned())
    .find(|p| p.parse::<f64>().is_ok_and(|v| v >= 0.0 && v.is_finite()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flavor(extra: &[(&str, &str)]) -> Flavor {
        Flavor {
            id: "f".into(),
            name: "gpu.large".into(),
            vcpus: 8,
            ram: 32768,
            disk: 40,
            ephemeral: 0,
            extra_specs: extra
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }
    }

    fn image(mut props: serde_json::Value) -> Image {
        props["id"] = json!("i");
        props["status"] = json!("active");
        serde_json::from_value(props).unwrap()
    }

    #[test]
    fn capacity_from_flavor_and_root_volume() {
        let f = flavor(&[]);
        let c = capacity(&f, None);
        assert_eq!(c["cpu"].0, "8");
        assert_eq!(c["memory"].0, "32768Mi");
        assert_eq!(c["ephemeral-storage"].0, "40Gi");
        assert!(!c.contains_key(DEFAULT_GPU_RESOURCE));
        assert_eq!(capacity(&f, Some(100))["ephemeral-storage"].0, "100Gi");
        let mut zero_disk = flavor(&[]);
        zero_disk.disk = 0;
        assert!(!capacity(&zero_disk, None).contains_key("ephemeral-storage"));
    }

    #[test]
    fn gpus_from_pci_aliases_and_placement_resources() {
        assert_eq!(
            gpu_count(&flavor(&[("pci_passthrough:alias", "a100:2,t4:1")])),
            3
        );
        assert_eq!(gpu_count(&flavor(&[("resources:VGPU", "1")])), 1);
        assert_eq!(
            gpu_count(&flavor(&[
                ("resources:PGPU", "2"),
                ("pci_passthrough:alias", "x:1")
            ])),
            3
        );
        assert_eq!(gpu_count(&flavor(&[("hw:cpu_policy", "dedicated")])), 0);
        assert_eq!(
            gpu_type(&flavor(&[("pci_passthrough:alias", "a100:2,t4:1")])).as_deref(),
            Some("a100")
        );
        assert_eq!(
            gpu_type(&flavor(&[
                ("resources:VGPU", "1"),
                ("capow:gpu-type", "l4")
            ]))
            .as_deref(),
            Some("l4")
        );
        assert_eq!(
            gpu_type(&flavor(&[("resources:VGPU", "1")])).as_deref(),
            Some("vgpu")
        );
        assert_eq!(gpu_type(&flavor(&[])), None);
        let c = capacity(
            &flavor(&[
                ("resources:VGPU", "1"),
                (GPU_RESOURCE_EXTRA_SPEC, "amd.com/gpu"),
            ]),
            None,
        );
        assert_eq!(c["amd.com/gpu"].0, "1");
        let c = capacity(&flavor(&[("pci_passthrough:alias", "a100:4")]), None);
        assert_eq!(c[DEFAULT_GPU_RESOURCE].0, "4");
    }

    #[test]
    fn architecture_and_os_from_image_properties() {
        assert_eq!(
            node_info(&image(
                json!({"hw_architecture": "aarch64", "os_type": "Linux"})
            )),
            NodeInfo {
                architecture: Some("arm64".into()),
                operating_system: Some("linux".into())
            }
        );
        assert_eq!(
            node_info(&image(json!({"architecture": "x86_64"})))
                .architecture
                .as_deref(),
            Some("amd64")
        );
        assert_eq!(
            node_info(&image(json!({"os_type": "windows"}))),
            NodeInfo {
                architecture: None,
                operating_system: Some("windows".into())
            }
        );
        assert_eq!(
            architecture(&image(json!({"hw_architecture": "mips"}))),
            None
        );
    }

    #[test]
    fn price_annotation_wins_and_must_be_a_number() {
        let f = flavor(&[(PRICE_EXTRA_SPEC, "0.12")]);
        assert_eq!(price(&f, &BTreeMap::new()).as_deref(), Some("0.12"));
        let ann: BTreeMap<String, String> =
            [(PRICE_ANNOTATION.to_owned(), "0.5".to_owned())].into();
        assert_eq!(price(&f, &ann).as_deref(), Some("0.5"));
        let bad: BTreeMap<String, String> =
            [(PRICE_ANNOTATION.to_owned(), "cheap".to_owned())].into();
        assert_eq!(price(&f, &bad).as_deref(), Some("0.12"));
        assert_eq!(price(&flavor(&[]), &BTreeMap::new()), None);
    }
}
