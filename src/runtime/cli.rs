//! Command line of the `capow` binary (clap derive; every flag also reads a `CAPOW_*`
//! environment variable).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// capow: Cluster API infrastructure provider for OpenStack worker machines of
/// hosted-control-plane clusters.
#[derive(Debug, Parser)]
#[command(name = "capow", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller manager.
    Manager(Box<ManagerArgs>),
    /// Write every generated install file (config/ and templates/ components and metadata,
    /// the generated parts of charts/capow and clusterstack/) below a directory
    /// (`capow manifests --output-dir .`).
    Manifests {
        /// Repository root to write into.
        #[arg(long, default_value = ".")]
        output_dir: std::path::PathBuf,
        /// The manager's container image, `repository[:tag]` (tag default `v<version>`), as
        /// config/manager, templates/infrastructure-components.yaml (default of the clusterctl
        /// variable `CAPOW_IMAGE`) and charts/capow/values.yaml name it.
        #[arg(long, default_value_t = crate::manifests::Image::default())]
        image: crate::manifests::Image,
    },
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD into a
    /// directory (`capow crd --output-dir config/crd/bases`).
    Crd {
        /// Directory to write `<group>_<plural>.yaml` files into, instead of printing.
        #[arg(long)]
        output_dir: Option<std::path::PathBuf>,
    },
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// Flags of `capow manager`.
#[derive(Debug, Args)]
pub struct ManagerArgs {
    /// Watch only this namespace (clusterctl's `--namespace` contract); all namespaces when unset.
    #[arg(long, env = "CAPOW_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the admin server (`/live`, `/ready`, `/metrics`).
    #[arg(long, env = "CAPOW_ADMIN_ADDRESS", default_value = "127.0.0.1:8080")]
    pub admin_address: SocketAddr,

    /// Log filter in `RUST_LOG` syntax.
    #[arg(long, env = "CAPOW_LOG", default_value = "info,kube_runtime=warn")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "CAPOW_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,

    /// Leader election settings.
    #[command(flatten)]
    pub leader: LeaderArgs,

    /// OpenStack client settings.
    #[command(flatten)]
    pub openstack: OpenStackArgs,

    /// Controller timings.
    #[command(flatten)]
    pub controller: ControllerArgs,

    /// The cluster-autoscaler externalgrpc server.
    #[command(flatten)]
    pub autoscaler: AutoscalerArgs,

    /// Node lifecycle (max node age, startup taint).
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
}

/// Node lifecycle (`crate::controllers::lifecycle`, ADR 0007).
#[derive(Debug, Args)]
pub struct LifecycleArgs {
    /// Smallest max node age accepted from the MachineDeployment annotation
    /// `capow.infrastructure.cluster.x-k8s.io/max-node-age` (the CRD field's own minimum is
    /// 1h). For tests only: a short age replaces every node soon after it is ready.
    #[arg(long, hide = true, env = "CAPOW_MAX_NODE_AGE_FLOOR", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_node_age_floor: Duration,
    /// Pause image capow runs in the workload cluster: the headroom placeholder pods
    /// (`spec.nodeLifecycle.headroom`) and the main container of the image warm-up pods
    /// (`spec.nodeLifecycle.imageWarmup`). Any image whose entrypoint sleeps forever and runs
    /// as a non-root user, normally the Kubernetes pause image from the registry or mirror the
    /// workload cluster pulls from, e.g. `<registry>/pause:3.10`. The default names no registry
    /// host. `--headroom-image` (its name before image warm-up) still works.
    #[arg(
        long,
        alias = "headroom-image",
        env = "CAPOW_HEADROOM_IMAGE",
        default_value = "pause:3.10"
    )]
    pub pause_image: String,
}

/// The externalgrpc cloud provider (`src/autoscaler/`) and its mTLS (`src/tls/`).
#[derive(Debug, Args)]
pub struct AutoscalerArgs {
    /// Address of the externalgrpc server; unset disables it.
    #[arg(long, env = "CAPOW_AUTOSCALER_ADDRESS")]
    pub autoscaler_address: Option<SocketAddr>,
    /// Serve plaintext gRPC without client certificates; every caller then sees every
    /// cluster. For local experiments only.
    #[arg(long, env = "CAPOW_AUTOSCALER_INSECURE", default_value_t = false)]
    pub autoscaler_insecure: bool,
    /// Name of the Service in front of the server (DNS SANs of the serving certificate).
    #[arg(
        long,
        env = "CAPOW_AUTOSCALER_SERVICE",
        default_value = "capow-autoscaler"
    )]
    pub autoscaler_service: String,
    /// capow's namespace: the Service's, and the CA Secret's (default `POD_NAMESPACE`, then
    /// `capow-system`).
    #[arg(long, env = "CAPOW_SYSTEM_NAMESPACE")]
    pub system_namespace: Option<String>,
    /// Extra IP addresses for the serving certificate (e.g. 127.0.0.1 in tests).
    #[arg(long, env = "CAPOW_AUTOSCALER_IP_SANS", value_delimiter = ',')]
    pub autoscaler_ip_san: Vec<std::net::IpAddr>,
    /// Address the cluster-autoscalers use to reach the server, written into their
    /// cloud-config (default `<service>.<namespace>.svc:<port>`).
    #[arg(long, env = "CAPOW_AUTOSCALER_PUBLISHED_ADDRESS")]
    pub autoscaler_published_address: Option<String>,
    /// Where the cluster-autoscaler mounts its credentials Secret.
    #[arg(long, env = "CAPOW_AUTOSCALER_MOUNT_DIR", default_value = crate::tls::cloud_config::DEFAULT_MOUNT_DIR)]
    pub autoscaler_mount_dir: String,
    /// Name of the Secret holding capow's CA.
    #[arg(long, env = "CAPOW_CA_SECRET", default_value = crate::tls::ca::DEFAULT_SECRET_NAME)]
    pub ca_secret: String,
    /// Repository (without tag) of the cluster-autoscaler image capow runs for clusters with
    /// `spec.autoscaler` but no `spec.autoscaler.image`; capow adds the tag of the Cluster's
    /// Kubernetes minor (docs/managed-autoscaler.md). The default names no registry host, so
    /// the container runtime resolves it by its own configuration: operators set the
    /// repository of their registry or mirror of the upstream image. Empty: such clusters
    /// must name their image, and their `AutoscalerReady` condition says so.
    #[arg(
        long,
        env = "CAPOW_AUTOSCALER_IMAGE_REPOSITORY",
        default_value = DEFAULT_AUTOSCALER_IMAGE_REPOSITORY,
        value_parser = image_repository
    )]
    pub autoscaler_image_repository: String,
    /// Node label that names a GPU node's GPU type (the GPULabel RPC).
    #[arg(
        long,
        env = "CAPOW_GPU_LABEL",
        default_value = "cluster-api/accelerator"
    )]
    pub gpu_label: String,
}

/// Default of `--autoscaler-image-repository`: the upstream image's name without a registry
/// host (kubernetes/autoscaler `cluster-autoscaler/README.md` names where the project publishes
/// it; operators prefix their registry or mirror).
pub const DEFAULT_AUTOSCALER_IMAGE_REPOSITORY: &str = "cluster-autoscaler";

/// Parses `--autoscaler-image-repository`: a repository without tag or digest (an empty value
/// means none, as clusterctl renders an unset variable).
fn image_repository(value: &str) -> Result<String, String> {
    let last = value.rsplit('/').next().unwrap_or_default();
    if value.contains('@') || last.contains(':') {
        return Err(format!(
            "{value:?} has a tag or digest; give the repository only (capow adds the tag of each Cluster's Kubernetes minor)"
        ));
    }
    if value.chars().any(char::is_whitespace) || value.ends_with('/') {
        return Err(format!("{value:?} is not an image repository"));
    }
    Ok(value.to_owned())
}

/// Leader election (a `coordination.k8s.io/v1` Lease).
#[derive(Debug, Args)]
pub struct LeaderArgs {
    /// Elect a leader among replicas before reconciling.
    #[arg(long, env = "CAPOW_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Namespace of the Lease (defaults to the pod's namespace, `POD_NAMESPACE`).
    #[arg(long, env = "CAPOW_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(
        long,
        env = "CAPOW_LEADER_ELECTION_ID",
        default_value = "capow-manager"
    )]
    pub leader_election_id: String,
    /// Lease duration in seconds.
    #[arg(long, env = "CAPOW_LEADER_LEASE_SECONDS", default_value_t = 15)]
    pub leader_lease_seconds: u64,
}

/// OpenStack client protection (`src/openstack/session.rs`; docs/operations.md, "When OpenStack
/// misbehaves").
#[derive(Debug, Args)]
pub struct OpenStackArgs {
    /// Sustained OpenStack API requests per second per identity.
    #[arg(long, env = "CAPOW_OPENSTACK_RPS", default_value = "20")]
    pub openstack_requests_per_second: NonZeroU32,
    /// Burst above the sustained rate.
    #[arg(long, env = "CAPOW_OPENSTACK_BURST", default_value = "40")]
    pub openstack_burst: NonZeroU32,
    /// OpenStack requests in flight per identity.
    #[arg(long, env = "CAPOW_OPENSTACK_MAX_IN_FLIGHT", default_value_t = 16)]
    pub openstack_max_in_flight: usize,
    /// Timeout of one OpenStack request.
    #[arg(long, env = "CAPOW_OPENSTACK_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub openstack_timeout: Duration,
    /// How long flavor/image/network lookups are shared between machines (0s: never).
    #[arg(long, env = "CAPOW_OPENSTACK_LOOKUP_CACHE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub openstack_lookup_cache_ttl: Duration,
}

/// Controller timings.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Poll interval of building and deleting servers (one list call per cloud per interval).
    #[arg(long, env = "CAPOW_BUILD_POLL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub build_poll_interval: Duration,
    /// Resync interval of ready machines.
    #[arg(long, env = "CAPOW_RESYNC", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// Reconciles in parallel per controller.
    #[arg(long, env = "CAPOW_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// How long a server create whose answer was never seen (crash, timeout, 5xx) may still
    /// be in flight in Nova; capow creates again, or declares a deleted machine's server gone,
    /// only after a lookup this long after the attempt.
    #[arg(long, env = "CAPOW_SERVER_CREATE_SETTLE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub server_create_settle: Duration,
    /// Upper bound of one reconcile; a reconcile running longer is stopped and retried.
    #[arg(long, env = "CAPOW_RECONCILE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub reconcile_timeout: Duration,
    /// Who creates a new machine's port: `auto` lets Nova create a machine's single plain port
    /// (a network and security groups, nothing else) with the server and capow create the
    /// others; `neutron` makes capow create, tag and delete every port (named
    /// `<machine>-<index>` as CAPO does).
    #[arg(long, env = "CAPOW_PORT_CREATION", value_enum, default_value_t)]
    pub port_creation: crate::controllers::PortCreation,
    /// Read timeout of every Kubernetes API request (and of connecting); watches are ended by
    /// the API server after 4/5 of it and resumed, so a half-open connection fails within it.
    #[arg(long, env = "CAPOW_KUBE_API_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub kube_api_timeout: Duration,
    /// What the periodic orphan sweep does with OpenStack resources tagged for a machine that no
    /// longer exists: `delete` them, only `report` them (event, metric, log), or `off`.
    #[arg(long, env = "CAPOW_ORPHAN_SWEEP", value_enum, default_value_t)]
    pub orphan_sweep: crate::controllers::orphans::SweepMode,
    /// Time between two orphan sweeps.
    #[arg(long, env = "CAPOW_ORPHAN_SWEEP_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub orphan_sweep_interval: Duration,
    /// Minimum age of a resource before the sweep may call it an orphan.
    #[arg(long, env = "CAPOW_ORPHAN_GRACE_PERIOD", default_value = "10m", value_parser = humantime::parse_duration)]
    pub orphan_grace_period: Duration,
    /// Test only: exit at this point to simulate a crash.
    #[arg(long, hide = true, value_enum)]
    pub fault_injection: Option<crate::controllers::FaultPoint>,
    /// Test only: exit at the n-th time the fault point is reached.
    #[arg(long, hide = true, default_value_t = 1)]
    pub fault_injection_hit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn manager_defaults_listen_on_loopback() {
        let cli = Cli::parse_from(["capow", "manager"]);
        let Command::Manager(args) = cli.command else {
            panic!("not manager")
        };
        assert!(args.admin_address.ip().is_loopback());
        assert_eq!(args.controller.build_poll_interval, Duration::from_secs(2));
        assert!(!args.leader.leader_elect);
        assert_eq!(
            args.autoscaler.autoscaler_image_repository,
            DEFAULT_AUTOSCALER_IMAGE_REPOSITORY
        );
    }

    #[test]
    fn the_image_repository_has_no_tag() {
        let parse = |v: &str| {
            Cli::try_parse_from([
                "capow",
                "manager",
                &format!("--autoscaler-image-repository={v}"),
            ])
            .map(|cli| match cli.command {
                Command::Manager(a) => Some(a.autoscaler.autoscaler_image_repository),
                _ => None,
            })
        };
        assert_eq!(
            parse("mirror.example:5000/autoscaling/cluster-autoscaler").unwrap(),
            Some("mirror.example:5000/autoscaling/cluster-autoscaler".to_owned())
        );
        assert_eq!(parse("").unwrap(), Some(String::new()));
        for bad in ["r/cluster-autoscaler:v1.36.1", "r/ca@sha256:00", "r/ca/"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
