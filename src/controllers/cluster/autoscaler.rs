//! The cluster-autoscaler capow runs for a cluster (`OpenStackWorkerCluster.spec.autoscaler`),
//! the way hosted control planes run their components: a Deployment in the Cluster's namespace
//! of the management cluster, next to the hosted API server, that reaches the workload cluster
//! through a kubeconfig and capow through the cloud-config Secret capow publishes
//! ([`crate::tls::cloud_config`]). Design: `docs/adr/0006-managed-cluster-autoscaler.md`;
//! operators' guide: `docs/managed-autoscaler.md`.
//!
//! Steps, called from the cluster controller's reconcile and cleanup:
//! - observe: the Cluster (pause, Kubernetes version), the credentials Secret
//!   `<cluster>-capow-autoscaler`, the workload cluster's `<cluster>-kubeconfig`;
//! - plan (pure, table-tested): validation, image, CA's argument list, the Deployment, its
//!   kubeconfig Secret, the RBAC objects and the priority ConfigMap inside the workload cluster;
//! - execute: server-side apply with capow's field manager: first inside the workload cluster
//!   (ServiceAccount, token Secret, ClusterRole/Role and bindings, ConfigMap), through the
//!   workload kubeconfig, then the Deployment and `<cluster>-cluster-autoscaler-kubeconfig`
//!   (built from the ServiceAccount's token) in the management cluster;
//! - status: the `AutoscalerReady` condition and an event when its reason changes.
//!
//! Nothing is deleted because an input is wrong: an invalid spec, a missing image, a missing
//! Secret or an unreachable workload cluster only set the condition. Only a removed or disabled
//! `spec.autoscaler` (or the deletion of the cluster) removes what capow made.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, HTTPGetAction, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::api::autoscaler::{
    DEFAULT_EXPANDER, DURATION_PATTERN, EXPANDERS, EXTRA_ARG_PATTERN, IMAGE_PATTERN,
    ManagedAutoscaler, RESERVED_FLAGS,
};
use crate::api::cluster::{OpenStackWorkerCluster, OpenStackWorkerClusterStatus};
use crate::api::conditions::{self, AUTOSCALER_READY, autoscaler_reasons as reasons};
use crate::capi::{self, CLUSTER_NAME_LABEL, Cluster};
use crate::controllers::{Context, Error, FIELD_MANAGER, describe_kube_error};

/// Namespace of the workload cluster where the cluster-autoscaler keeps its status ConfigMap,
/// its leader-election Lease and the priority expander's ConfigMap (CA's `--namespace`), and
/// where capow puts its ServiceAccount.
pub const WORKLOAD_NAMESPACE: &str = "kube-system";
/// Name of the ServiceAccount, token Secret prefix, ClusterRole, Role and bindings capow makes
/// inside the workload cluster.
pub const WORKLOAD_NAME: &str = "capow-cluster-autoscaler";
/// Name of the ServiceAccount's token Secret (`kubernetes.io/service-account-token`).
pub const TOKEN_SECRET: &str = "capow-cluster-autoscaler-token";
/// The priority expander's ConfigMap and its key (`cluster-autoscaler/expander/priority/priority.go`
/// at tag `cluster-autoscaler-1.36.1`: `PriorityConfigMapName`, `ConfigMapKey`).
pub const PRIORITY_CONFIG_MAP: (&str, &str) =
    ("cluster-autoscaler-priority-expander", "priorities");
/// CA's status ConfigMap (`--status-config-map-name` default, `config/flags/flags.go`).
pub const STATUS_CONFIG_MAP: &str = "cluster-autoscaler-status";
/// CA's leader-election Lease (`main.go` `leaderElectionConfiguration`, `ResourceName`).
pub const LEASE: &str = "cluster-autoscaler";
/// Where the pod mounts `<cluster>-cluster-autoscaler-kubeconfig`.
pub const KUBECONFIG_MOUNT_DIR: &str = "/etc/cluster-autoscaler/kubeconfig";
/// Key of the kubeconfig in both kubeconfig Secrets (CAPI's `<cluster>-kubeconfig` convention).
pub const KUBECONFIG_KEY: &str = "value";
/// Pod-template annotation with the SHA-256 of the mounted credentials and kubeconfig; a new
/// client certificate or token changes it and rolls the Deployment.
pub const CHECKSUM_ANNOTATION: &str = "capow.infrastructure.cluster.x-k8s.io/credentials-checksum";
/// CA's metrics and health port (`--address` default `:8085`, `config/flags/flags.go`).
pub const METRICS_PORT: i32 = 8085;
/// User and group the container runs as (the non-root user of distroless images, which the
/// upstream cluster-autoscaler image is built on).
pub const RUN_AS: i64 = 65532;
/// Value of `app.kubernetes.io/name` on everything capow makes for a cluster-autoscaler (the
/// chart's NetworkPolicy admits these pods to capow's gRPC port).
pub const APP_NAME: &str = "cluster-autoscaler";
/// CA patch releases by Kubernetes minor, for the default image tag: the releases capow's e2e
/// suite runs (kubernetes/autoscaler tags `cluster-autoscaler-1.34.1` and
/// `cluster-autoscaler-1.36.1`). Other minors get `v1.<minor>.0`, CA's first release of that
/// minor. CA releases one minor per Kubernetes minor and supports the matching Kubernetes
/// version (kubernetes/autoscaler `cluster-autoscaler/README.md`, "Releases").
pub const CA_RELEASES: &[(u64, &str)] = &[(34, "v1.34.1"), (36, "v1.36.1")];

/// How long to wait before looking again at something another component is about to create
/// (the credentials Secret, the workload kubeconfig, the ServiceAccount token).
const WAIT: Duration = Duration::from_secs(10);
/// How long to wait after a failure to reach or write a cluster.
const RETRY: Duration = Duration::from_secs(30);

/// Name of the Deployment of cluster `cluster`: `<cluster>-cluster-autoscaler`.
pub fn deployment_name(cluster: &str) -> String {
    format!("{cluster}-cluster-autoscaler")
}

/// Name of the Secret with the cluster-autoscaler's kubeconfig of the workload cluster:
/// `<cluster>-cluster-autoscaler-kubeconfig`.
pub fn kubeconfig_secret_name(cluster: &str) -> String {
    format!("{cluster}-cluster-autoscaler-kubeconfig")
}

/// Name of the workload cluster's admin kubeconfig Secret the control-plane provider
/// publishes (CAPI `<cluster>-kubeconfig`, key `value`).
pub fn admin_kubeconfig_secret_name(cluster: &str) -> String {
    format!("{cluster}-kubeconfig")
}

/// A rule of `spec.autoscaler` that the spec breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// Field path, e.g. `spec.autoscaler.extraArgs[0]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn matches(pattern: &str, value: &str) -> bool {
    regex::Regex::new(pattern).is_ok_and(|r| r.is_match(value))
}

/// Checks `spec` against the rules the CRD's CEL rules enforce (for objects stored before a
/// rule existed): known expanders, each once, `random` last; `priorities` exactly when the
/// priority expander is used, with patterns that compile; an image with a tag or digest; Go
/// durations; one flag per `extraArgs` item and none of [`RESERVED_FLAGS`].
///
/// # Errors
/// The first rule broken, with its field path.
pub fn validate(spec: &ManagedAutoscaler) -> Result<(), Invalid> {
    let expander = spec.expander.as_deref().unwrap_or(DEFAULT_EXPANDER);
    let chain: Vec<&str> = expander.split(',').collect();
    for (i, e) in chain.iter().enumerate() {
        if !EXPANDERS.contains(e) {
            return Err(invalid(
                "spec.autoscaler.expander",
                format!(
                    "unknown expander {e:?}; use {} or a comma-separated chain of them",
                    EXPANDERS.join(", ")
                ),
            ));
        }
        if chain[..i].contains(e) {
            return Err(invalid(
                "spec.autoscaler.expander",
                format!("the expander {e} is named twice"),
            ));
        }
        if *e == "random" && i + 1 != chain.len() {
            return Err(invalid(
                "spec.autoscaler.expander",
                "random always picks one option, so it must be the last expander of the chain",
            ));
        }
    }
    let priority = chain.contains(&"priority");
    if priority && spec.priorities.is_empty() {
        return Err(invalid(
            "spec.autoscaler.priorities",
            "the priority expander needs at least one priority",
        ));
    }
    if !priority && !spec.priorities.is_empty() {
        return Err(invalid(
            "spec.autoscaler.priorities",
            "only the priority expander reads priorities: add priority to spec.autoscaler.expander",
        ));
    }
    let mut seen = Vec::new();
    for (i, p) in spec.priorities.iter().enumerate() {
        if p.priority < 0 {
            return Err(invalid(
                format!("spec.autoscaler.priorities[{i}].priority"),
                "must be 0 or more (the cluster-autoscaler never picks a negative priority)",
            ));
        }
        if seen.contains(&p.priority) {
            return Err(invalid(
                format!("spec.autoscaler.priorities[{i}].priority"),
                format!("the priority {} is listed twice", p.priority),
            ));
        }
        seen.push(p.priority);
        if p.node_groups.is_empty() {
            return Err(invalid(
                format!("spec.autoscaler.priorities[{i}].nodeGroups"),
                "list at least one node-group pattern",
            ));
        }
        for (j, pattern) in p.node_groups.iter().enumerate() {
            if let Err(e) = regex::Regex::new(pattern) {
                return Err(invalid(
                    format!("spec.autoscaler.priorities[{i}].nodeGroups[{j}]"),
                    format!(
                        "{pattern:?} is not a regular expression: {}",
                        e.to_string().lines().last().unwrap_or_default().trim()
                    ),
                ));
            }
        }
    }
    if let Some(image) = &spec.image
        && !matches(IMAGE_PATTERN, image)
    {
        return Err(invalid(
            "spec.autoscaler.image",
            format!("{image:?} names no tag or digest, e.g. <repository>:v1.36.1"),
        ));
    }
    let durations = [
        (
            "spec.autoscaler.maxNodeProvisionTime",
            spec.max_node_provision_time.as_ref(),
        ),
        (
            "spec.autoscaler.scaleDown.unneededTime",
            spec.scale_down
                .as_ref()
                .and_then(|s| s.unneeded_time.as_ref()),
        ),
        (
            "spec.autoscaler.scaleDown.delayAfterAdd",
            spec.scale_down
                .as_ref()
                .and_then(|s| s.delay_after_add.as_ref()),
        ),
        (
            "spec.autoscaler.scaleDown.delayAfterDelete",
            spec.scale_down
                .as_ref()
                .and_then(|s| s.delay_after_delete.as_ref()),
        ),
        (
            "spec.autoscaler.scaleDown.delayAfterFailure",
            spec.scale_down
                .as_ref()
                .and_then(|s| s.delay_after_failure.as_ref()),
        ),
    ];
    for (field, value) in durations {
        if let Some(v) = value
            && !matches(DURATION_PATTERN, v)
        {
            return Err(invalid(
                field,
                format!("{v:?} is not a Go duration with units, e.g. 10m, 90s or 1h30m"),
            ));
        }
    }
    for (i, arg) in spec.extra_args.iter().enumerate() {
        let field = format!("spec.autoscaler.extraArgs[{i}]");
        if !matches(EXTRA_ARG_PATTERN, arg) {
            return Err(invalid(
                field,
                format!("{arg:?} is not one flag in the form --name or --name=value"),
            ));
        }
        let name = arg
            .trim_start_matches("--")
            .split('=')
            .next()
            .unwrap_or_default();
        if RESERVED_FLAGS.contains(&name) {
            return Err(invalid(
                field,
                format!(
                    "--{name} is set by capow (from spec.autoscaler or its own settings) and cannot be overridden"
                ),
            ));
        }
    }
    Ok(())
}

/// The default image tag for Kubernetes `version` (`v1.36.3`, `1.34`, `v1.35.0-rc.1`): the
/// [`CA_RELEASES`] entry of its minor, else `v1.<minor>.0`. `None` when `version` is not a
/// Kubernetes 1.x version.
pub fn default_tag(version: &str) -> Option<String> {
    let v = version.trim().trim_start_matches('v');
    let mut parts = v.split(['.', '-', '+']);
    if parts.next()? != "1" {
        return None;
    }
    let minor: u64 = parts.next()?.parse().ok()?;
    Some(
        CA_RELEASES
            .iter()
            .find(|(m, _)| *m == minor)
            .map_or_else(|| format!("v1.{minor}.0"), |(_, tag)| (*tag).to_owned()),
    )
}

/// Why no image could be chosen: the condition message, naming what to set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMissing(pub String);

/// The image to run: `spec.autoscaler.image`, else `<repository>:<default_tag(version)>`.
///
/// # Errors
/// [`ImageMissing`] with a message that says what to set: the image, the manager's
/// `--autoscaler-image-repository`, or a Kubernetes version on the Cluster.
pub fn image(
    spec: &ManagedAutoscaler,
    version: Option<&str>,
    repository: Option<&str>,
) -> Result<String, ImageMissing> {
    if let Some(image) = &spec.image {
        return Ok(image.clone());
    }
    let Some(repository) = repository else {
        return Err(ImageMissing(
            "no cluster-autoscaler image: set spec.autoscaler.image (with a tag, e.g. <repository>:v1.36.1), or start the capow manager with --autoscaler-image-repository=<repository> so that capow picks the tag from the Cluster's Kubernetes version".into(),
        ));
    };
    let Some(version) = version else {
        return Err(ImageMissing(
            "no cluster-autoscaler image: the Kubernetes version of the Cluster is unknown (neither Cluster.spec.topology.version nor spec.version of the control-plane object is set); set spec.autoscaler.image".into(),
        ));
    };
    let Some(tag) = default_tag(version) else {
        return Err(ImageMissing(format!(
            "no cluster-autoscaler image: the Kubernetes version {version:?} of the Cluster is not a 1.x version; set spec.autoscaler.image"
        )));
    };
    Ok(format!("{}:{tag}", repository.trim_end_matches('/')))
}

/// CA's command line (after the binary): capow's flags, then those of the fields that are set,
/// then `extraArgs` in order. `credentials_mount_dir` is where the credentials Secret is
/// mounted (its cloud-config's file paths point there).
pub fn args(spec: &ManagedAutoscaler, credentials_mount_dir: &str) -> Vec<String> {
    let dir = credentials_mount_dir.trim_end_matches('/');
    let mut args = vec![
        "--cloud-provider=externalgrpc".to_owned(),
        format!(
            "--cloud-config={dir}/{}",
            crate::tls::cloud_config::CLOUD_CONFIG_KEY
        ),
        format!("--kubeconfig={KUBECONFIG_MOUNT_DIR}/{KUBECONFIG_KEY}"),
        format!("--namespace={WORKLOAD_NAMESPACE}"),
        format!("--address=:{METRICS_PORT}"),
        "--leader-elect=true".to_owned(),
        format!(
            "--expander={}",
            spec.expander.as_deref().unwrap_or(DEFAULT_EXPANDER)
        ),
    ];
    if let Some(s) = &spec.scale_down {
        if let Some(v) = s.enabled {
            args.push(format!("--scale-down-enabled={v}"));
        }
        for (flag, value) in [
            ("scale-down-unneeded-time", &s.unneeded_time),
            ("scale-down-delay-after-add", &s.delay_after_add),
            ("scale-down-delay-after-delete", &s.delay_after_delete),
            ("scale-down-delay-after-failure", &s.delay_after_failure),
            ("scale-down-utilization-threshold", &s.utilization_threshold),
        ] {
            if let Some(v) = value {
                args.push(format!("--{flag}={v}"));
            }
        }
    }
    if let Some(v) = spec.balance_similar_node_groups {
        args.push(format!("--balance-similar-node-groups={v}"));
    }
    if let Some(v) = &spec.max_node_provision_time {
        args.push(format!("--max-node-provision-time={v}"));
    }
    args.extend(spec.extra_args.iter().cloned());
    args
}

/// The labels of everything capow makes for the cluster-autoscaler of `cluster`.
pub fn labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), cluster.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            FIELD_MANAGER.to_owned(),
        ),
        (CLUSTER_NAME_LABEL.to_owned(), cluster.to_owned()),
    ])
}

/// The label selector (as a `labelSelector` string) of the Deployments capow makes; the
/// cluster controller watches only those.
pub fn deployment_selector() -> String {
    format!("app.kubernetes.io/name={APP_NAME},app.kubernetes.io/managed-by={FIELD_MANAGER}")
}

/// `base` restricted to capow's cluster-autoscaler Deployments (for the controller's watch).
pub fn owned_watch(base: watcher::Config) -> watcher::Config {
    base.labels(&deployment_selector())
}

/// What [`deployment`] needs.
#[derive(Clone, Debug)]
pub struct DeploymentInput<'a> {
    /// The Cluster's name.
    pub cluster: &'a str,
    /// The Cluster's namespace.
    pub namespace: &'a str,
    /// The owner: the `OpenStackWorkerCluster` (controller reference, so the garbage collector
    /// deletes the Deployment with it and the controller is woken by its changes).
    pub owner: OwnerReference,
    /// The settings.
    pub spec: &'a ManagedAutoscaler,
    /// The image ([`image`]).
    pub image: &'a str,
    /// Where the credentials Secret is mounted.
    pub credentials_mount_dir: &'a str,
    /// [`checksum`] of what the pod mounts.
    pub checksum: &'a str,
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_owned())
}

/// The Deployment: one replica (`Recreate`: never two cluster-autoscalers at once; CA's leader
/// election is on as well), no ServiceAccount token mounted, non-root with a read-only root
/// filesystem, no capabilities and the runtime's seccomp profile; it mounts the credentials
/// Secret and the kubeconfig Secret read-only and carries [`CHECKSUM_ANNOTATION`].
pub fn deployment(input: &DeploymentInput<'_>) -> Deployment {
    let labels = labels(input.cluster);
    let selector = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        (
            "app.kubernetes.io/instance".to_owned(),
            input.cluster.to_owned(),
        ),
    ]);
    let resources = input
        .spec
        .resources
        .clone()
        .unwrap_or_else(|| ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("100m")),
                ("memory".to_owned(), quantity("300Mi")),
            ])),
            ..ResourceRequirements::default()
        });
    let container = Container {
        name: APP_NAME.to_owned(),
        image: Some(input.image.to_owned()),
        command: Some(vec!["/cluster-autoscaler".to_owned()]),
        args: Some(args(input.spec, input.credentials_mount_dir)),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".to_owned()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/health-check".to_owned()),
                port: IntOrString::String("metrics".to_owned()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(30),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: Some(resources),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "credentials".to_owned(),
                mount_path: input.credentials_mount_dir.trim_end_matches('/').to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "kubeconfig".to_owned(),
                mount_path: KUBECONFIG_MOUNT_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let secret_volume = |name: &str, secret: String| Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(input.cluster)),
            namespace: Some(input.namespace.to_owned()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![input.owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            revision_history_limit: Some(3),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        CHECKSUM_ANNOTATION.to_owned(),
                        input.checksum.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![
                        secret_volume(
                            "credentials",
                            crate::tls::cloud_config::secret_name(input.cluster),
                        ),
                        secret_volume("kubeconfig", kubeconfig_secret_name(input.cluster)),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The workload cluster's API server as the admin kubeconfig names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// URL of the API server.
    pub server: String,
    /// Base64 PEM bundle that verifies the API server, when the kubeconfig has one.
    pub certificate_authority_data: Option<String>,
    /// TLS server name to check instead of the URL's host.
    pub tls_server_name: Option<String>,
    /// The kubeconfig skips verification (kept as it is).
    pub insecure_skip_tls_verify: bool,
}

/// Reads the admin kubeconfig of the workload cluster: its current context's cluster. Refuses
/// references to files and credential plugins (`certificate-authority`, `client-certificate`,
/// `client-key`, `tokenFile`, `exec`, `auth-provider`): capow would read its own files or run
/// programs named by whoever wrote the Secret.
///
/// # Errors
/// A sentence saying what is wrong with the kubeconfig (never its content).
pub fn read_admin_kubeconfig(text: &str) -> Result<(kube::config::Kubeconfig, Endpoint), String> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(text)
        .map_err(|e| format!("the kubeconfig cannot be read: {e}"))?;
    let context_name = kubeconfig
        .current_context
        .clone()
        .or_else(|| kubeconfig.contexts.first().map(|c| c.name.clone()))
        .ok_or("the kubeconfig has no context")?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| format!("the kubeconfig has no context {context_name:?}"))?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| format!("the kubeconfig has no cluster {:?}", context.cluster))?;
    if cluster.certificate_authority.is_some() {
        return Err("the kubeconfig names a certificate-authority file; capow takes only embedded data (certificate-authority-data)".into());
    }
    for user in &kubeconfig.auth_infos {
        if let Some(a) = &user.auth_info {
            let files = [
                ("client-certificate", a.client_certificate.is_some()),
                ("client-key", a.client_key.is_some()),
                ("tokenFile", a.token_file.is_some()),
                ("exec", a.exec.is_some()),
                ("auth-provider", a.auth_provider.is_some()),
            ];
            if let Some((what, _)) = files.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "the kubeconfig's user {:?} uses {what}; capow takes only embedded credentials (client-certificate-data, client-key-data, token)",
                    user.name
                ));
            }
        }
    }
    let server = cluster
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or("the kubeconfig's cluster has no server")?;
    let endpoint = Endpoint {
        server,
        certificate_authority_data: cluster.certificate_authority_data.clone(),
        tls_server_name: cluster.tls_server_name.clone(),
        insecure_skip_tls_verify: cluster.insecure_skip_tls_verify.unwrap_or(false),
    };
    Ok((kubeconfig, endpoint))
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct KubeconfigCluster<'a> {
    server: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_authority_data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_server_name: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    insecure_skip_tls_verify: bool,
}

/// The cluster-autoscaler's kubeconfig: the workload cluster's `endpoint` (its CA data, or
/// `ca_fallback` — the token Secret's `ca.crt`, base64 — when the admin kubeconfig has none)
/// and the ServiceAccount `token`; context namespace [`WORKLOAD_NAMESPACE`].
///
/// # Errors
/// When YAML encoding fails.
pub fn ca_kubeconfig(
    endpoint: &Endpoint,
    ca_fallback: Option<&str>,
    token: &str,
) -> Result<String, serde_yaml::Error> {
    let cluster = KubeconfigCluster {
        server: &endpoint.server,
        certificate_authority_data: endpoint.certificate_authority_data.as_deref().or(
            if endpoint.insecure_skip_tls_verify {
                None
            } else {
                ca_fallback
            },
        ),
        tls_server_name: endpoint.tls_server_name.as_deref(),
        insecure_skip_tls_verify: endpoint.insecure_skip_tls_verify,
    };
    serde_yaml::to_string(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "workload", "cluster": cluster}],
        "users": [{"name": WORKLOAD_NAME, "user": {"token": token}}],
        "contexts": [{"name": WORKLOAD_NAME, "context": {"cluster": "workload", "user": WORKLOAD_NAME, "namespace": WORKLOAD_NAMESPACE}}],
        "current-context": WORKLOAD_NAME,
    }))
}

/// SHA-256 (hex) of the credentials Secret's data (keys in order) and the kubeconfig: what the
/// pod mounts. A reissued client certificate or a new token changes it.
pub fn checksum(credentials: &BTreeMap<String, ByteString>, kubeconfig: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (k, v) in credentials {
        ctx.update(k.as_bytes());
        ctx.update(&[0]);
        ctx.update(&(v.0.len() as u64).to_be_bytes());
        ctx.update(&v.0);
    }
    ctx.update(b"kubeconfig\0");
    ctx.update(kubeconfig.as_bytes());
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The Secret with the cluster-autoscaler's kubeconfig, owned by the Deployment (uid
/// `deployment_uid`): deleting the Deployment lets the garbage collector delete it.
pub fn kubeconfig_secret(
    cluster: &str,
    namespace: &str,
    deployment_uid: &str,
    kubeconfig: &str,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(kubeconfig_secret_name(cluster)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels(cluster)),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".to_owned(),
                kind: "Deployment".to_owned(),
                name: deployment_name(cluster),
                uid: deployment_uid.to_owned(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            KUBECONFIG_KEY.to_owned(),
            ByteString(kubeconfig.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// What capow makes inside the workload cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadObjects {
    /// The cluster-autoscaler's ServiceAccount in [`WORKLOAD_NAMESPACE`].
    pub service_account: ServiceAccount,
    /// Its long-lived token (`kubernetes.io/service-account-token`, filled by the workload
    /// cluster's token controller).
    pub token_secret: Secret,
    /// Cluster-wide permissions.
    pub cluster_role: ClusterRole,
    /// Binds [`WorkloadObjects::cluster_role`] to the ServiceAccount.
    pub cluster_role_binding: ClusterRoleBinding,
    /// Permissions in [`WORKLOAD_NAMESPACE`] (ConfigMaps, Lease).
    pub role: Role,
    /// Binds [`WorkloadObjects::role`] to the ServiceAccount.
    pub role_binding: RoleBinding,
    /// The priority expander's ConfigMap when the priority expander is used.
    pub priority_config_map: Option<ConfigMap>,
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect());
    PolicyRule {
        api_groups: strings(groups),
        resources: strings(resources),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

fn named_rule(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        resource_names: Some(names.iter().map(|s| (*s).to_owned()).collect()),
        ..rule(groups, resources, verbs)
    }
}

const READ: &[&str] = &["get", "list", "watch"];

/// The cluster-wide rules the cluster-autoscaler 1.34–1.36 needs with `--cloud-provider=
/// externalgrpc`, derived from what its code reads and writes (kubernetes/autoscaler, tag
/// `cluster-autoscaler-1.36.1`, paths below `cluster-autoscaler/`) and from the scheduler
/// plugins it runs (kubernetes/kubernetes v1.36.2 `pkg/scheduler/framework/plugins`).
pub fn cluster_rules() -> Vec<PolicyRule> {
    vec![
        // Listers and the leader-election check (`utils/kubernetes/listers.go`, `main.go`);
        // taints ToBeDeleted/DeletionCandidate by update (`utils/taints/taints.go`).
        rule(&[""], &["nodes"], &["get", "list", "watch", "update"]),
        // Listers and the unschedulable-pod trigger (`loop/trigger.go`); drain deletes pods
        // it cannot evict (`core/scaledown/actuation/drain.go`).
        rule(&[""], &["pods"], &["get", "list", "watch", "delete"]),
        rule(&[""], &["pods/eviction"], &["create"]),
        // The event recorder (`utils/kubernetes/factory.go`, core/v1 events).
        rule(&[""], &["events"], &["create", "patch"]),
        // Listers (`utils/kubernetes/listers.go`) and scheduler plugins: InterPodAffinity
        // (namespaces), PodTopologySpread (services, controllers), VolumeBinding/VolumeZone/
        // NodeVolumeLimits (volumes, storage classes, CSI objects).
        rule(
            &[""],
            &[
                "namespaces",
                "services",
                "replicationcontrollers",
                "persistentvolumeclaims",
                "persistentvolumes",
            ],
            READ,
        ),
        rule(
            &["apps"],
            &["daemonsets", "replicasets", "statefulsets"],
            READ,
        ),
        rule(&["batch"], &["jobs"], READ),
        rule(&["policy"], &["poddisruptionbudgets"], READ),
        rule(
            &["storage.k8s.io"],
            &[
                "storageclasses",
                "csinodes",
                "csidrivers",
                "csistoragecapacities",
                "volumeattachments",
            ],
            READ,
        ),
        // Dynamic resource allocation, on by default since CA 1.34
        // (`--enable-dynamic-resource-allocation`, `simulator/dynamicresources/`).
        rule(
            &["resource.k8s.io"],
            &["resourceclaims", "resourceslices", "deviceclasses"],
            READ,
        ),
    ]
}

/// The rules in [`WORKLOAD_NAMESPACE`]: the priority expander's ConfigMap lister
/// (`expander/factory/expander_factory.go`), the status ConfigMap
/// (`clusterstate/utils/status.go`: get, create, update, delete), and the leader-election
/// Lease (`main.go`, client-go `resourcelock`: get, create, update).
pub fn namespace_rules() -> Vec<PolicyRule> {
    vec![
        rule(&[""], &["configmaps"], &["get", "list", "watch", "create"]),
        named_rule(
            &[""],
            &["configmaps"],
            &[STATUS_CONFIG_MAP],
            &["update", "delete"],
        ),
        rule(&["coordination.k8s.io"], &["leases"], &["create"]),
        named_rule(
            &["coordination.k8s.io"],
            &["leases"],
            &[LEASE],
            &["get", "update"],
        ),
    ]
}

/// The priority expander's YAML: `priority: [patterns]`, highest first.
pub fn priorities_yaml(spec: &ManagedAutoscaler) -> String {
    let mut out = String::new();
    let mut sorted: Vec<_> = spec.priorities.iter().collect();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.priority));
    for p in sorted {
        out.push_str(&format!("{}:\n", p.priority));
        for pattern in &p.node_groups {
            // JSON strings are YAML strings: the pattern is quoted and escaped.
            out.push_str(&format!(
                "  - {}\n",
                serde_json::Value::String(pattern.clone())
            ));
        }
    }
    out
}

/// Everything capow makes inside the workload cluster for `cluster`'s cluster-autoscaler.
pub fn workload_objects(cluster: &str, spec: &ManagedAutoscaler) -> WorkloadObjects {
    let labels = labels(cluster);
    let meta = |name: &str, namespaced: bool| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespaced.then(|| WORKLOAD_NAMESPACE.to_owned()),
        labels: Some(labels.clone()),
        ..ObjectMeta::default()
    };
    let subject = Subject {
        kind: "ServiceAccount".to_owned(),
        name: WORKLOAD_NAME.to_owned(),
        namespace: Some(WORKLOAD_NAMESPACE.to_owned()),
        ..Subject::default()
    };
    let uses_priority = spec
        .expander
        .as_deref()
        .unwrap_or(DEFAULT_EXPANDER)
        .split(',')
        .any(|e| e == "priority");
    WorkloadObjects {
        service_account: ServiceAccount {
            metadata: meta(WORKLOAD_NAME, true),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
        token_secret: Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    "kubernetes.io/service-account.name".to_owned(),
                    WORKLOAD_NAME.to_owned(),
                )])),
                ..meta(TOKEN_SECRET, true)
            },
            type_: Some("kubernetes.io/service-account-token".to_owned()),
            ..Secret::default()
        },
        cluster_role: ClusterRole {
            metadata: meta(WORKLOAD_NAME, false),
            rules: Some(cluster_rules()),
            ..ClusterRole::default()
        },
        cluster_role_binding: ClusterRoleBinding {
            metadata: meta(WORKLOAD_NAME, false),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "ClusterRole".to_owned(),
                name: WORKLOAD_NAME.to_owned(),
            },
            subjects: Some(vec![subject.clone()]),
        },
        role: Role {
            metadata: meta(WORKLOAD_NAME, true),
            rules: Some(namespace_rules()),
        },
        role_binding: RoleBinding {
            metadata: meta(WORKLOAD_NAME, true),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "Role".to_owned(),
                name: WORKLOAD_NAME.to_owned(),
            },
            subjects: Some(vec![subject]),
        },
        priority_config_map: uses_priority.then(|| ConfigMap {
            metadata: meta(PRIORITY_CONFIG_MAP.0, true),
            data: Some(BTreeMap::from([(
                PRIORITY_CONFIG_MAP.1.to_owned(),
                priorities_yaml(spec),
            )])),
            ..ConfigMap::default()
        }),
    }
}

/// Whether the Deployment is available: its controller saw the current generation, one
/// replica is updated and available.
pub fn available(d: &Deployment) -> bool {
    let Some(status) = &d.status else {
        return false;
    };
    let current = status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    current
        && status.updated_replicas.unwrap_or(0) >= 1
        && status.available_replicas.unwrap_or(0) >= 1
}

// ---------------------------------------------------------------------------------------
// I/O

/// The condition this reconcile arrived at, and when to look again.
struct Verdict {
    status: bool,
    reason: &'static str,
    message: String,
    requeue: Option<Duration>,
}

fn verdict(reason: &'static str, message: impl Into<String>, requeue: Option<Duration>) -> Verdict {
    Verdict {
        status: false,
        reason,
        message: message.into(),
        requeue,
    }
}

fn owner_cluster(c: &OpenStackWorkerCluster) -> Option<(String, String)> {
    c.owner_references()
        .iter()
        .find(|o| o.kind == "Cluster" && o.api_version.split('/').next() == Some(capi::GROUP))
        .map(|o| (o.name.clone(), o.uid.clone()))
}

fn owner_reference(c: &OpenStackWorkerCluster) -> OwnerReference {
    OwnerReference {
        api_version: OpenStackWorkerCluster::api_version(&()).into_owned(),
        kind: OpenStackWorkerCluster::kind(&()).into_owned(),
        name: c.name_any(),
        uid: c.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

fn pp() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Runs the managed cluster-autoscaler step of a reconcile of `c`: deploys, updates or removes
/// it and sets (or, once nothing is left, removes) the `AutoscalerReady` condition in
/// `status`, with an event when its reason changes. Never fails the reconcile: problems are
/// the condition's message. Returns when to look again (`None`: on the next change).
pub async fn reconcile(
    c: &OpenStackWorkerCluster,
    ctx: &Context,
    status: &mut OpenStackWorkerClusterStatus,
) -> Option<Duration> {
    if capi::has_paused_annotation(c.annotations()) || c.meta().deletion_timestamp.is_some() {
        return None;
    }
    let (cluster_name, _) = owner_cluster(c)?;
    let ns = c.namespace().unwrap_or_default();
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), &ns);
    let cluster = match clusters.get_opt(&cluster_name).await {
        Ok(Some(cluster)) if cluster.is_paused() => return None,
        Ok(cluster) => cluster,
        Err(e) => {
            tracing::debug!(error = %e, "Cannot read the Cluster for the cluster-autoscaler");
            return Some(RETRY);
        }
    };
    let had_condition = status
        .conditions
        .iter()
        .any(|x| x.type_ == AUTOSCALER_READY);
    // A Cluster being deleted loses its cluster-autoscaler first, while its workload API
    // server still answers (CAPI deletes the workers and the control plane before the
    // infrastructure cluster), so that it stops scaling and leaves nothing behind.
    let deleting = cluster
        .as_ref()
        .is_some_and(|cl| cl.metadata.deletion_timestamp.is_some());
    let why = if deleting {
        "the Cluster is being deleted"
    } else if c.spec.autoscaler.is_some() {
        "spec.autoscaler is disabled"
    } else {
        "spec.autoscaler is unset"
    };
    let wanted = c
        .spec
        .autoscaler
        .as_ref()
        .filter(|a| a.is_enabled() && !deleting);
    let verdict = match wanted {
        Some(spec) => match cluster {
            Some(cluster) => ensure(c, ctx, spec, &cluster, &cluster_name, &ns).await,
            None => verdict(
                reasons::DEPLOYED,
                format!("waiting for the Cluster {ns}/{cluster_name}"),
                Some(WAIT),
            ),
        },
        None => {
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
            let exists = match deployments.get_opt(&deployment_name(&cluster_name)).await {
                Ok(d) => d.is_some_and(|d| is_ours(&d)),
                Err(e) => {
                    tracing::debug!(error = %e, "Cannot read the cluster-autoscaler Deployment");
                    return Some(RETRY);
                }
            };
            if !had_condition && !exists {
                return None;
            }
            match remove(ctx, &cluster_name, &ns, !deleting).await {
                Ok(()) => {
                    status.conditions.retain(|x| x.type_ != AUTOSCALER_READY);
                    let note = format!(
                        "Removed the cluster-autoscaler: the Deployment {ns}/{} with its kubeconfig Secret, and its ServiceAccount, RBAC and ConfigMap in the workload cluster ({why})",
                        deployment_name(&cluster_name),
                    );
                    ctx.event(
                        &c.object_ref(&()),
                        EventType::Normal,
                        "AutoscalerRemoved",
                        "Autoscaler",
                        note,
                    )
                    .await;
                    return None;
                }
                Err(e) => verdict(
                    reasons::REMOVING,
                    format!(
                        "{}; {why}, and capow retries the removal",
                        e.describe(&cluster_name, &ns)
                    ),
                    Some(RETRY),
                ),
            }
        }
    };
    let previous = status
        .conditions
        .iter()
        .find(|x| x.type_ == AUTOSCALER_READY)
        .map(|x| (x.reason.clone(), x.message.clone()));
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            AUTOSCALER_READY,
            verdict.status,
            verdict.reason,
            verdict.message.clone(),
            c.meta().generation,
        ),
    );
    if previous.as_ref().map(|(r, _)| r.as_str()) != Some(verdict.reason) {
        let type_ = match verdict.reason {
            reasons::AVAILABLE | reasons::DEPLOYED => EventType::Normal,
            _ => EventType::Warning,
        };
        ctx.event(
            &c.object_ref(&()),
            type_,
            verdict.reason,
            "Autoscaler",
            verdict.message,
        )
        .await;
    }
    verdict.requeue
}

fn is_ours(d: &Deployment) -> bool {
    d.labels()
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some(FIELD_MANAGER)
        && d.labels().get("app.kubernetes.io/name").map(String::as_str) == Some(APP_NAME)
}

/// The Kubernetes version of `cluster`: `spec.topology.version`, else `spec.version` (then
/// `status.version`) of its control-plane object.
async fn kubernetes_version(
    ctx: &Context,
    cluster: &Cluster,
    ns: &str,
) -> Result<Option<String>, String> {
    if let Some(v) = cluster
        .spec
        .topology
        .as_ref()
        .and_then(|t| t.version.clone())
        .filter(|v| !v.is_empty())
    {
        return Ok(Some(v));
    }
    let Some(r) = cluster
        .spec
        .control_plane_ref
        .as_ref()
        .filter(|r| !r.kind.is_empty() && !r.name.is_empty())
    else {
        return Ok(None);
    };
    let group = kube::discovery::group(&ctx.client, &r.api_group)
        .await
        .map_err(|e| {
            format!(
                "cannot discover the API group {} of the control plane: {}",
                r.api_group,
                describe_kube_error(&e)
            )
        })?;
    let Some((resource, _)) = group.recommended_kind(&r.kind) else {
        return Err(format!(
            "the API group {} serves no kind {} (Cluster.spec.controlPlaneRef)",
            r.api_group, r.kind
        ));
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource);
    let object = api.get_opt(&r.name).await.map_err(|e| {
        format!(
            "cannot read the control plane {} {ns}/{}: {}",
            r.kind,
            r.name,
            describe_kube_error(&e)
        )
    })?;
    Ok(object.and_then(|o| {
        ["spec", "status"].iter().find_map(|part| {
            o.data[part]["version"]
                .as_str()
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        })
    }))
}

async fn workload_client(
    kubeconfig: kube::config::Kubeconfig,
    timeouts: crate::kubeapi::Timeouts,
) -> Result<kube::Client, String> {
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| format!("the kubeconfig cannot be used: {e}"))?;
    config.read_timeout = Some(timeouts.read);
    config.connect_timeout = Some(timeouts.read.min(Duration::from_secs(30)));
    config.write_timeout = Some(timeouts.read);
    kube::Client::try_from(config).map_err(|e| format!("the kubeconfig cannot be used: {e}"))
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .filter(|s| !s.is_empty())
}

/// The admin kubeconfig of the workload cluster, read and checked.
async fn admin_kubeconfig(
    ctx: &Context,
    cluster: &str,
    ns: &str,
) -> Result<Option<(kube::config::Kubeconfig, Endpoint)>, String> {
    let name = admin_kubeconfig_secret_name(cluster);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(secret) = secrets.get_opt(&name).await.map_err(|e| {
        format!(
            "cannot read the Secret {ns}/{name}: {}",
            describe_kube_error(&e)
        )
    })?
    else {
        return Ok(None);
    };
    let text = secret_text(&secret, KUBECONFIG_KEY)
        .ok_or_else(|| format!("the Secret {ns}/{name} has no key {KUBECONFIG_KEY}"))?;
    read_admin_kubeconfig(&text)
        .map(Some)
        .map_err(|e| format!("Secret {ns}/{name}: {e}"))
}

async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(&obj.name_any(), &pp(), &Patch::Apply(obj)).await
}

/// Applies the workload objects; returns the token Secret as the API server has it.
async fn apply_workload(
    client: &kube::Client,
    objects: &WorkloadObjects,
) -> Result<Secret, kube::Error> {
    let ns = WORKLOAD_NAMESPACE;
    apply(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        &objects.service_account,
    )
    .await?;
    let token = apply(
        &Api::<Secret>::namespaced(client.clone(), ns),
        &objects.token_secret,
    )
    .await?;
    apply(
        &Api::<ClusterRole>::all(client.clone()),
        &objects.cluster_role,
    )
    .await?;
    apply(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        &objects.cluster_role_binding,
    )
    .await?;
    apply(&Api::<Role>::namespaced(client.clone(), ns), &objects.role).await?;
    apply(
        &Api::<RoleBinding>::namespaced(client.clone(), ns),
        &objects.role_binding,
    )
    .await?;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    match &objects.priority_config_map {
        Some(cm) => {
            apply(&config_maps, cm).await?;
        }
        None => delete_ours(&config_maps, PRIORITY_CONFIG_MAP.0).await?,
    }
    Ok(token)
}

/// Deletes `name` if it exists and carries capow's `managed-by` label (a ConfigMap a user made
/// for their own cluster-autoscaler is left alone).
async fn delete_ours<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(obj) = api.get_opt(name).await? else {
        return Ok(());
    };
    if obj
        .labels()
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        != Some(FIELD_MANAGER)
    {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn delete_workload(client: &kube::Client) -> Result<(), kube::Error> {
    let ns = WORKLOAD_NAMESPACE;
    delete_ours(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        PRIORITY_CONFIG_MAP.0,
    )
    .await?;
    delete_ours(
        &Api::<RoleBinding>::namespaced(client.clone(), ns),
        WORKLOAD_NAME,
    )
    .await?;
    delete_ours(&Api::<Role>::namespaced(client.clone(), ns), WORKLOAD_NAME).await?;
    delete_ours(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        WORKLOAD_NAME,
    )
    .await?;
    delete_ours(&Api::<ClusterRole>::all(client.clone()), WORKLOAD_NAME).await?;
    delete_ours(&Api::<Secret>::namespaced(client.clone(), ns), TOKEN_SECRET).await?;
    delete_ours(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        WORKLOAD_NAME,
    )
    .await
}

async fn ensure(
    c: &OpenStackWorkerCluster,
    ctx: &Context,
    spec: &ManagedAutoscaler,
    cluster: &Cluster,
    cluster_name: &str,
    ns: &str,
) -> Verdict {
    if let Err(e) = validate(spec) {
        return verdict(
            reasons::INVALID,
            format!("{e}; the cluster-autoscaler is left as it is"),
            None,
        );
    }
    let settings = &ctx.config.managed_autoscaler;
    let version = if spec.image.is_none() && settings.image_repository.is_some() {
        match kubernetes_version(ctx, cluster, ns).await {
            Ok(v) => v,
            Err(e) => {
                return verdict(
                    reasons::IMAGE_MISSING,
                    format!(
                        "{e}; set spec.autoscaler.image to run the cluster-autoscaler without it"
                    ),
                    Some(RETRY),
                );
            }
        }
    } else {
        None
    };
    let image = match image(
        spec,
        version.as_deref(),
        settings.image_repository.as_deref(),
    ) {
        Ok(image) => image,
        // The version may still come (the control plane is created after the Cluster).
        Err(ImageMissing(message)) => {
            return verdict(
                reasons::IMAGE_MISSING,
                message,
                settings
                    .image_repository
                    .as_ref()
                    .map(|_| ctx.config.input_retry),
            );
        }
    };
    if !settings.credentials_published {
        return verdict(
            reasons::CREDENTIALS_MISSING,
            "this capow manager runs without its externalgrpc server (--autoscaler-address), so it publishes no credentials for a cluster-autoscaler; start it with --autoscaler-address or remove spec.autoscaler",
            None,
        );
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let credentials_name = crate::tls::cloud_config::secret_name(cluster_name);
    let credentials = match secrets.get_opt(&credentials_name).await {
        Ok(Some(s)) => s.data.unwrap_or_default(),
        Ok(None) => {
            return verdict(
                reasons::CREDENTIALS_MISSING,
                format!(
                    "waiting for capow to publish the credentials Secret {ns}/{credentials_name}"
                ),
                Some(WAIT),
            );
        }
        Err(e) => {
            return verdict(
                reasons::CREDENTIALS_MISSING,
                format!(
                    "cannot read the credentials Secret {ns}/{credentials_name}: {}",
                    describe_kube_error(&e)
                ),
                Some(RETRY),
            );
        }
    };
    let unreachable = |message: String, requeue| {
        verdict(
            reasons::WORKLOAD_CLUSTER_UNREACHABLE,
            message,
            Some(requeue),
        )
    };
    let (kubeconfig, endpoint) = match admin_kubeconfig(ctx, cluster_name, ns).await {
        Ok(Some(k)) => k,
        Ok(None) => {
            return unreachable(
                format!(
                    "waiting for the workload cluster's kubeconfig Secret {ns}/{} (key {KUBECONFIG_KEY}), which the control-plane provider publishes",
                    admin_kubeconfig_secret_name(cluster_name)
                ),
                WAIT,
            );
        }
        Err(e) => return unreachable(e, RETRY),
    };
    let workload = match workload_client(kubeconfig, ctx.config.kube).await {
        Ok(client) => client,
        Err(e) => return unreachable(e, RETRY),
    };
    let objects = workload_objects(cluster_name, spec);
    let token_secret = match apply_workload(&workload, &objects).await {
        Ok(t) => t,
        Err(e) => {
            return unreachable(
                format!(
                    "cannot write the cluster-autoscaler's ServiceAccount, RBAC and ConfigMap into the workload cluster at {}: {}",
                    endpoint.server,
                    describe_kube_error(&e)
                ),
                RETRY,
            );
        }
    };
    let Some(token) = secret_text(&token_secret, "token") else {
        return unreachable(
            format!(
                "waiting for the workload cluster to issue the token of the ServiceAccount {WORKLOAD_NAMESPACE}/{WORKLOAD_NAME} (Secret {WORKLOAD_NAMESPACE}/{TOKEN_SECRET}); its token controller fills it"
            ),
            Duration::from_secs(2),
        );
    };
    let ca_fallback = token_secret
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .map(|v| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(&v.0)
        });
    let kubeconfig = match ca_kubeconfig(&endpoint, ca_fallback.as_deref(), &token) {
        Ok(k) => k,
        Err(e) => {
            return verdict(
                reasons::DEPLOY_FAILED,
                format!("cannot encode the cluster-autoscaler's kubeconfig: {e}"),
                Some(RETRY),
            );
        }
    };
    let sum = checksum(&credentials, &kubeconfig);
    let desired = deployment(&DeploymentInput {
        cluster: cluster_name,
        namespace: ns,
        owner: owner_reference(c),
        spec,
        image: &image,
        credentials_mount_dir: &settings.credentials_mount_dir,
        checksum: &sum,
    });
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let name = deployment_name(cluster_name);
    let deployed = match apply(&deployments, &desired).await {
        Ok(d) => d,
        Err(e) => {
            return verdict(
                reasons::DEPLOY_FAILED,
                format!(
                    "cannot apply the Deployment {ns}/{name}: {}",
                    describe_kube_error(&e)
                ),
                Some(RETRY),
            );
        }
    };
    let secret = kubeconfig_secret(
        cluster_name,
        ns,
        &deployed.uid().unwrap_or_default(),
        &kubeconfig,
    );
    if let Err(e) = apply(&secrets, &secret).await {
        return verdict(
            reasons::DEPLOY_FAILED,
            format!(
                "cannot apply the Secret {ns}/{}: {}",
                kubeconfig_secret_name(cluster_name),
                describe_kube_error(&e)
            ),
            Some(RETRY),
        );
    }
    let expander = spec.expander.as_deref().unwrap_or(DEFAULT_EXPANDER);
    if available(&deployed) {
        Verdict {
            status: true,
            reason: reasons::AVAILABLE,
            message: format!(
                "the cluster-autoscaler {image} (expander {expander}) runs as Deployment {ns}/{name}"
            ),
            requeue: None,
        }
    } else {
        verdict(
            reasons::DEPLOYED,
            format!(
                "applied the Deployment {ns}/{name} with the cluster-autoscaler {image} (expander {expander}); waiting for it to become available ({} of 1 replicas available)",
                deployed
                    .status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0)
            ),
            None,
        )
    }
}

/// Why removing failed.
enum Removal {
    /// Deleting the Deployment in the management cluster failed.
    Deployment(kube::Error),
    /// The workload cluster could not be cleaned (the sentence says why).
    Workload(String),
}

impl Removal {
    fn describe(&self, cluster: &str, ns: &str) -> String {
        match self {
            Removal::Deployment(e) => format!(
                "cannot delete the Deployment {ns}/{}: {}",
                deployment_name(cluster),
                describe_kube_error(e)
            ),
            Removal::Workload(message) => message.clone(),
        }
    }
}

/// Removes the Deployment (its kubeconfig Secret goes with it: the garbage collector deletes
/// what it owns) and the objects in the workload cluster. With `strict`, a workload cluster
/// that cannot be reached is an error (disabling: capow retries); without, it is logged and
/// skipped (the cluster is being deleted, its control plane with it).
async fn remove(ctx: &Context, cluster: &str, ns: &str, strict: bool) -> Result<(), Removal> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    delete_ours(&deployments, &deployment_name(cluster))
        .await
        .map_err(Removal::Deployment)?;
    let workload = async {
        let Some((kubeconfig, endpoint)) = admin_kubeconfig(ctx, cluster, ns).await? else {
            return Err(format!(
                "the workload cluster's kubeconfig Secret {ns}/{} is gone, so the cluster-autoscaler's ServiceAccount, RBAC and ConfigMap in its {WORKLOAD_NAMESPACE} namespace cannot be removed",
                admin_kubeconfig_secret_name(cluster)
            ));
        };
        let client = workload_client(kubeconfig, ctx.config.kube).await?;
        delete_workload(&client).await.map_err(|e| {
            format!(
                "cannot remove the cluster-autoscaler's ServiceAccount, RBAC and ConfigMap from the workload cluster at {}: {}",
                endpoint.server,
                describe_kube_error(&e)
            )
        })
    };
    match workload.await {
        Ok(()) => Ok(()),
        Err(e) if strict => Err(Removal::Workload(e)),
        Err(e) => {
            tracing::info!(reason = %e, "Skipped removing the cluster-autoscaler's objects from the workload cluster");
            Ok(())
        }
    }
}

/// The deletion step: removes the cluster's cluster-autoscaler before anything else goes (so
/// it stops scaling), as far as it can. A workload cluster that cannot be reached any more is
/// skipped; the Deployment would also go with the `OpenStackWorkerCluster` (it owns it).
///
/// # Errors
/// [`Error::Kube`] when the Deployment cannot be deleted in the management cluster.
pub async fn cleanup(c: &OpenStackWorkerCluster, ctx: &Context) -> Result<(), Error> {
    let Some((cluster, _)) = owner_cluster(c) else {
        return Ok(());
    };
    let ns = c.namespace().unwrap_or_default();
    let had = c.spec.autoscaler.is_some()
        || c.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|x| x.type_ == AUTOSCALER_READY));
    if !had {
        return Ok(());
    }
    match remove(ctx, &cluster, &ns, false).await {
        Ok(()) => Ok(()),
        Err(Removal::Deployment(source)) => Err(Error::Kube {
            action: "delete the cluster-autoscaler Deployment",
            source,
        }),
        Err(Removal::Workload(reason)) => {
            tracing::info!(%reason, "Skipped removing the cluster-autoscaler's objects from the workload cluster");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::autoscaler::{ExpanderPriority, ScaleDown};

    fn spec() -> ManagedAutoscaler {
        ManagedAutoscaler::default()
    }

    #[test]
    fn the_default_tag_follows_the_kubernetes_minor() {
        for (version, tag) in [
            ("v1.36.3", Some("v1.36.1")),
            ("1.36", Some("v1.36.1")),
            ("v1.34.0", Some("v1.34.1")),
            ("v1.35.2", Some("v1.35.0")),
            ("v1.37.0-rc.1", Some("v1.37.0")),
            ("v1.33.1+k3s1", Some("v1.33.0")),
            ("v2.0.0", None),
            ("latest", None),
            ("", None),
        ] {
            assert_eq!(default_tag(version).as_deref(), tag, "{version}");
        }
    }

    #[test]
    fn the_image_comes_from_the_spec_or_the_repository_and_the_version() {
        let mut s = spec();
        assert_eq!(
            image(
                &s,
                Some("v1.36.3"),
                Some("mirror.example/autoscaling/cluster-autoscaler/")
            ),
            Ok("mirror.example/autoscaling/cluster-autoscaler:v1.36.1".to_owned())
        );
        let missing = image(&s, Some("v1.36.3"), None).unwrap_err();
        assert!(missing.0.contains("spec.autoscaler.image"), "{missing:?}");
        assert!(
            missing.0.contains("--autoscaler-image-repository"),
            "{missing:?}"
        );
        let unknown = image(&s, None, Some("r/ca")).unwrap_err();
        assert!(
            unknown.0.contains("Cluster.spec.topology.version"),
            "{unknown:?}"
        );
        s.image = Some("own/ca:v1.36.0".into());
        assert_eq!(image(&s, None, None), Ok("own/ca:v1.36.0".to_owned()));
    }

    #[test]
    fn the_arguments_are_capows_then_the_fields_then_extra_args() {
        assert_eq!(
            args(&spec(), "/etc/capow-autoscaler/"),
            [
                "--cloud-provider=externalgrpc",
                "--cloud-config=/etc/capow-autoscaler/cloud-config",
                "--kubeconfig=/etc/cluster-autoscaler/kubeconfig/value",
                "--namespace=kube-system",
                "--address=:8085",
                "--leader-elect=true",
                "--expander=least-waste",
            ]
        );
        let s = ManagedAutoscaler {
            expander: Some("priority,least-waste".into()),
            priorities: vec![ExpanderPriority {
                priority: 10,
                node_groups: vec![".*".into()],
            }],
            scale_down: Some(ScaleDown {
                enabled: Some(true),
                unneeded_time: Some("5m".into()),
                delay_after_add: Some("2m".into()),
                delay_after_delete: None,
                delay_after_failure: Some("1m".into()),
                utilization_threshold: Some("0.6".into()),
            }),
            balance_similar_node_groups: Some(true),
            max_node_provision_time: Some("10m".into()),
            extra_args: vec!["--scan-interval=5s".into(), "--v=2".into()],
            ..spec()
        };
        let a = args(&s, "/etc/capow-autoscaler");
        assert_eq!(
            a[6..],
            [
                "--expander=priority,least-waste",
                "--scale-down-enabled=true",
                "--scale-down-unneeded-time=5m",
                "--scale-down-delay-after-add=2m",
                "--scale-down-delay-after-failure=1m",
                "--scale-down-utilization-threshold=0.6",
                "--balance-similar-node-groups=true",
                "--max-node-provision-time=10m",
                "--scan-interval=5s",
                "--v=2",
            ]
        );
        // Every flag capow writes is reserved, so extraArgs can never override it.
        for arg in &a[..a.len() - 2] {
            let name = arg.trim_start_matches("--").split('=').next().unwrap();
            assert!(RESERVED_FLAGS.contains(&name), "{name}");
        }
    }

    #[test]
    fn bad_input_is_named_by_its_field() {
        let cases: Vec<(ManagedAutoscaler, &str, &str)> = vec![
            (
                ManagedAutoscaler {
                    expander: Some("cheapest".into()),
                    ..spec()
                },
                "spec.autoscaler.expander",
                "unknown expander",
            ),
            (
                ManagedAutoscaler {
                    expander: Some("random,price".into()),
                    ..spec()
                },
                "spec.autoscaler.expander",
                "last",
            ),
            (
                ManagedAutoscaler {
                    expander: Some("price,price".into()),
                    ..spec()
                },
                "spec.autoscaler.expander",
                "twice",
            ),
            (
                ManagedAutoscaler {
                    expander: Some("priority".into()),
                    ..spec()
                },
                "spec.autoscaler.priorities",
                "at least one",
            ),
            (
                ManagedAutoscaler {
                    priorities: vec![ExpanderPriority {
                        priority: 1,
                        node_groups: vec!["a".into()],
                    }],
                    ..spec()
                },
                "spec.autoscaler.priorities",
                "only the priority expander",
            ),
            (
                ManagedAutoscaler {
                    expander: Some("priority".into()),
                    priorities: vec![ExpanderPriority {
                        priority: 1,
                        node_groups: vec!["workers-(a".into()],
                    }],
                    ..spec()
                },
                "spec.autoscaler.priorities[0].nodeGroups[0]",
                "not a regular expression",
            ),
            (
                ManagedAutoscaler {
                    expander: Some("priority".into()),
                    priorities: vec![
                        ExpanderPriority {
                            priority: 1,
                            node_groups: vec!["a".into()],
                        },
                        ExpanderPriority {
                            priority: 1,
                            node_groups: vec!["b".into()],
                        },
                    ],
                    ..spec()
                },
                "spec.autoscaler.priorities[1].priority",
                "twice",
            ),
            (
                ManagedAutoscaler {
                    image: Some("mirror.example:5000/cluster-autoscaler".into()),
                    ..spec()
                },
                "spec.autoscaler.image",
                "no tag or digest",
            ),
            (
                ManagedAutoscaler {
                    max_node_provision_time: Some("15".into()),
                    ..spec()
                },
                "spec.autoscaler.maxNodeProvisionTime",
                "Go duration",
            ),
            (
                ManagedAutoscaler {
                    extra_args: vec!["--v=2".into(), "--kubeconfig=/tmp/other".into()],
                    ..spec()
                },
                "spec.autoscaler.extraArgs[1]",
                "--kubeconfig is set by capow",
            ),
            (
                ManagedAutoscaler {
                    extra_args: vec!["--scan-interval".into(), "5s".into()],
                    ..spec()
                },
                "spec.autoscaler.extraArgs[1]",
                "not one flag",
            ),
        ];
        for (s, field, words) in cases {
            let e = validate(&s).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(words), "{e}");
            assert!(!e.to_string().contains("Some("), "{e}");
        }
        assert_eq!(validate(&spec()), Ok(()));
    }

    fn input<'a>(s: &'a ManagedAutoscaler, checksum: &'a str) -> DeploymentInput<'a> {
        DeploymentInput {
            cluster: "prod",
            namespace: "tenants",
            owner: OwnerReference {
                api_version: "infrastructure.cluster.x-k8s.io/v1alpha1".into(),
                kind: "OpenStackWorkerCluster".into(),
                name: "prod".into(),
                uid: "u1".into(),
                controller: Some(true),
                block_owner_deletion: None,
            },
            spec: s,
            image: "r/cluster-autoscaler:v1.36.1",
            credentials_mount_dir: "/etc/capow-autoscaler",
            checksum,
        }
    }

    #[test]
    fn the_deployment_is_hardened_and_mounts_both_secrets() {
        let s = spec();
        let d = deployment(&input(&s, "abc"));
        assert_eq!(d.metadata.name.as_deref(), Some("prod-cluster-autoscaler"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("tenants"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("OpenStackWorkerCluster", Some(true))
        );
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.strategy.as_ref().unwrap().type_.as_deref(),
            Some("Recreate")
        );
        let template = &spec.template;
        let selector = spec.selector.match_labels.as_ref().unwrap();
        let pod_labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        assert_eq!(
            template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[CHECKSUM_ANNOTATION],
            "abc"
        );
        let pod = template.spec.as_ref().unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name, None);
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let container = &pod.containers[0];
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(
            container.image.as_deref(),
            Some("r/cluster-autoscaler:v1.36.1")
        );
        let mounts: Vec<(&str, &str)> = container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(
            mounts,
            [
                ("credentials", "/etc/capow-autoscaler"),
                ("kubeconfig", "/etc/cluster-autoscaler/kubeconfig")
            ]
        );
        let volumes: Vec<(&str, &str)> = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v.name.as_str(),
                    v.secret.as_ref().unwrap().secret_name.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            volumes,
            [
                ("credentials", "prod-capow-autoscaler"),
                ("kubeconfig", "prod-cluster-autoscaler-kubeconfig")
            ]
        );
        let args = container.args.as_ref().unwrap();
        assert!(args.contains(&"--cloud-config=/etc/capow-autoscaler/cloud-config".to_owned()));
        assert!(args.contains(&"--kubeconfig=/etc/cluster-autoscaler/kubeconfig/value".to_owned()));
        assert_eq!(
            container
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["memory"]
                .0,
            "300Mi"
        );
        // A new checksum (reissued certificate, new token) changes the pod template: a rollout.
        let other = deployment(&input(&s, "def"));
        assert_ne!(
            serde_json::to_value(&d.spec.as_ref().unwrap().template).unwrap(),
            serde_json::to_value(&other.spec.as_ref().unwrap().template).unwrap()
        );
        assert_eq!(d.metadata, other.metadata);
    }

    #[test]
    fn the_checksum_covers_the_certificate_and_the_kubeconfig() {
        let creds = |crt: &str| {
            BTreeMap::from([
                ("ca.crt".to_owned(), ByteString(b"ca".to_vec())),
                ("tls.crt".to_owned(), ByteString(crt.as_bytes().to_vec())),
            ])
        };
        let a = checksum(&creds("one"), "k1");
        assert_eq!(a.len(), 64);
        assert_eq!(a, checksum(&creds("one"), "k1"));
        assert_ne!(a, checksum(&creds("two"), "k1"));
        assert_ne!(a, checksum(&creds("one"), "k2"));
    }

    #[test]
    fn the_workload_objects_bind_ca_rules_to_its_service_account() {
        let s = ManagedAutoscaler {
            expander: Some("priority".into()),
            priorities: vec![
                ExpanderPriority {
                    priority: 10,
                    node_groups: vec![".*/big$".into()],
                },
                ExpanderPriority {
                    priority: 50,
                    node_groups: vec!["MachineDeployment/ns/gpu".into(), "a:b".into()],
                },
            ],
            ..spec()
        };
        let o = workload_objects("prod", &s);
        assert_eq!(
            o.token_secret.type_.as_deref(),
            Some("kubernetes.io/service-account-token")
        );
        assert_eq!(
            o.token_secret.metadata.annotations.as_ref().unwrap()["kubernetes.io/service-account.name"],
            WORKLOAD_NAME
        );
        assert_eq!(o.role_binding.role_ref.kind, "Role");
        assert_eq!(o.cluster_role_binding.role_ref.kind, "ClusterRole");
        for subjects in [&o.role_binding.subjects, &o.cluster_role_binding.subjects] {
            let s = &subjects.as_ref().unwrap()[0];
            assert_eq!(
                (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()),
                ("ServiceAccount", WORKLOAD_NAME, Some(WORKLOAD_NAMESPACE))
            );
        }
        let grants = |rules: &[PolicyRule], resource: &str, verb: &str| {
            rules.iter().any(|r| {
                r.resources.as_ref().unwrap().iter().any(|x| x == resource)
                    && r.verbs.iter().any(|v| v == verb)
                    && r.resource_names.is_none()
            })
        };
        let cluster = o.cluster_role.rules.as_ref().unwrap();
        for (resource, verb) in [
            ("nodes", "update"),
            ("pods", "list"),
            ("pods/eviction", "create"),
            ("poddisruptionbudgets", "watch"),
            ("csinodes", "list"),
            ("resourceslices", "watch"),
        ] {
            assert!(grants(cluster, resource, verb), "{resource} {verb}");
        }
        assert!(!grants(cluster, "secrets", "get"), "no Secrets");
        assert!(!cluster.iter().any(|r| r.verbs.iter().any(|v| v == "*")));
        let ns = o.role.rules.as_ref().unwrap();
        assert!(grants(ns, "configmaps", "watch"));
        assert!(
            !grants(ns, "configmaps", "delete"),
            "only its status ConfigMap"
        );
        let cm = o.priority_config_map.unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some(PRIORITY_CONFIG_MAP.0));
        let yaml = &cm.data.unwrap()[PRIORITY_CONFIG_MAP.1];
        assert_eq!(
            yaml,
            "50:\n  - \"MachineDeployment/ns/gpu\"\n  - \"a:b\"\n10:\n  - \".*/big$\"\n"
        );
        // As CA reads it (sigs.k8s.io/yaml into map[int][]string).
        let parsed: BTreeMap<i64, Vec<String>> = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(parsed[&50], ["MachineDeployment/ns/gpu", "a:b"]);
        assert!(
            workload_objects("prod", &spec())
                .priority_config_map
                .is_none()
        );
    }

    #[test]
    fn the_kubeconfig_carries_the_token_and_refuses_files_and_plugins() {
        let admin = "apiVersion: v1\nkind: Config\nclusters:\n- name: w\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: Q0E=\nusers:\n- name: admin\n  user:\n    client-certificate-data: Yw==\n    client-key-data: aw==\ncontexts:\n- name: w\n  context: {cluster: w, user: admin}\ncurrent-context: w\n";
        let (_, endpoint) = read_admin_kubeconfig(admin).unwrap();
        assert_eq!(endpoint.server, "https://127.0.0.1:6443");
        let text = ca_kubeconfig(&endpoint, Some("ignored"), "tok").unwrap();
        let parsed = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0E="));
        assert_eq!(parsed.current_context.as_deref(), Some(WORKLOAD_NAME));
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let user = &doc["users"][0]["user"];
        assert_eq!(user["token"].as_str(), Some("tok"));
        assert_eq!(
            user.as_mapping().unwrap().len(),
            1,
            "never the admin's key: {user:?}"
        );

        for (bad, word) in [
            (
                admin.replace(
                    "certificate-authority-data: Q0E=",
                    "certificate-authority: /etc/ca.crt",
                ),
                "certificate-authority file",
            ),
            (
                admin.replace("client-key-data: aw==", "client-key: /var/run/secrets/key"),
                "client-key",
            ),
            (
                admin.replace(
                    "client-key-data: aw==",
                    "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
                ),
                "tokenFile",
            ),
            (
                admin.replace(
                    "client-key-data: aw==",
                    "exec: {command: /bin/sh, apiVersion: client.authentication.k8s.io/v1}",
                ),
                "exec",
            ),
            (
                admin.replace("server: https://127.0.0.1:6443", "server: ''"),
                "no server",
            ),
        ] {
            let e = read_admin_kubeconfig(&bad).unwrap_err();
            assert!(e.contains(word), "{e}");
        }
    }

    #[test]
    fn availability_needs_the_current_generation() {
        let mut d = deployment(&input(&spec(), "abc"));
        d.metadata.generation = Some(2);
        assert!(!available(&d));
        d.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            observed_generation: Some(1),
            updated_replicas: Some(1),
            available_replicas: Some(1),
            ..Default::default()
        });
        assert!(!available(&d), "an old generation's pod");
        d.status.as_mut().unwrap().observed_generation = Some(2);
        assert!(available(&d));
    }
}
