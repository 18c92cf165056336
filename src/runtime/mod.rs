//! Wiring of the manager process: CLI, logging, metrics registry, admin server, leader
//! election, controllers and shutdown. The only place that knows how the parts fit.

pub mod admin;
pub mod cli;
pub mod telemetry;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::controllers::{self, ControllerConfig, ReconcileMetrics};
use crate::openstack::{ClientOptions, Clouds, Metrics as OpenStackMetrics};
use cli::{Cli, Command, ManagerArgs};

/// Runs the command line.
///
/// # Errors
/// Whatever the subcommand fails with.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Manifests { output_dir, image } => {
            for (path, content) in crate::manifests::files_for(&image)? {
                let path = output_dir.join(path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("failed to create {}", parent.display()))?;
                }
                std::fs::write(&path, content)
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
            Ok(())
        }
        Command::Crd { output_dir: None } => {
            print!("{}", crate::manifests::crds_yaml()?);
            Ok(())
        }
        Command::Crd {
            output_dir: Some(dir),
        } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
            for (name, yaml) in crate::manifests::crd_files()? {
                let path = dir.join(name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
            Ok(())
        }
        Command::Manager(args) => manager(*args).await,
    }
}

/// The manager: [`Metrics`], the controllers' [`controller_config`], the admin server, the
/// externalgrpc server ([`start_autoscaler`]), [`Leadership`], then the controllers
/// ([`spawn_controllers`]) until shutdown or lost leadership.
async fn manager(args: ManagerArgs) -> anyhow::Result<()> {
    let ManagerArgs {
        namespace,
        admin_address,
        log,
        log_format,
        leader,
        openstack,
        controller,
        autoscaler,
        lifecycle,
    } = args;
    telemetry::init(&log, log_format)?;
    // clusterctl renders `--namespace=${CAPOW_WATCH_NAMESPACE:=}` as an empty value: all namespaces.
    let namespace = namespace.filter(|n| !n.is_empty());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        namespace = namespace.as_deref().unwrap_or("<all>"),
        "Starting capow manager"
    );

    let kube_timeouts = crate::kubeapi::Timeouts {
        read: controller.kube_api_timeout,
    };
    let client = kube_timeouts.client().await?;
    let metrics = Metrics::new();
    let ctx = Arc::new(controllers::Context::new(
        client.clone(),
        Arc::new(clouds(&openstack, metrics.openstack)),
        metrics.reconcile,
        controller_config(&controller, &autoscaler, kube_timeouts),
        std::env::var("POD_NAME").ok(),
    ));

    let shutdown = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let admin = tokio::spawn(admin::serve(
        admin_address,
        admin::AdminState {
            registry: Arc::new(metrics.registry),
            ready: ready.clone(),
        },
        shutdown.clone(),
    ));
    tokio::spawn(signal_shutdown(shutdown.clone()));

    // One watch and store per kind, shared by the autoscaler index (every replica) and the
    // controllers (the leader); started before leadership so that a standby takes over warm.
    let caches = crate::caches::Caches::start(
        &client,
        namespace.as_deref(),
        &kube_timeouts.watcher_config(),
        &shutdown,
    );
    tokio::time::timeout(std::time::Duration::from_secs(120), caches.ready())
        .await
        .context("the manager's watches did not sync within 120 s")??;

    // The externalgrpc server answers on every replica (reads come from local caches); only
    // the leader publishes credentials and reconciles.
    let publisher = match autoscaler.autoscaler_address {
        Some(addr) => start_autoscaler(
            &client,
            &caches,
            addr,
            &autoscaler,
            (metrics.rpc, metrics.annotation, &metrics.node_groups),
            &shutdown,
        )
        .await
        .context("failed to start the externalgrpc server")?,
        None => None,
    };

    // Ready means "caches synced and serving" on every replica, leader or not: the
    // externalgrpc Service then sends the cluster-autoscaler to any replica, and a rolling
    // update can finish (a new pod must become ready while the old one still holds the Lease).
    ready.store(true, Ordering::Relaxed);

    let mut leadership =
        match Leadership::acquire(&client, leader, namespace.as_deref(), &shutdown).await? {
            Some(leadership) => leadership,
            None => return Ok(()),
        };

    let controllers = spawn_controllers(
        ctx,
        caches,
        namespace,
        publisher,
        Background {
            sweep: controllers::orphans::SweepConfig {
                mode: controller.orphan_sweep,
                interval: controller.orphan_sweep_interval,
                grace: controller.orphan_grace_period,
            },
            orphan_metrics: metrics.orphan,
            lifecycle: controllers::lifecycle::LifecycleConfig {
                max_node_age_floor: lifecycle.max_node_age_floor,
                pause_image: lifecycle.pause_image.clone(),
            },
            lifecycle_metrics: metrics.lifecycle,
        },
        shutdown.clone(),
    );

    let mut lost_leadership = false;
    tokio::select! {
        () = leadership.lost() => {
            tracing::error!("Lost leadership; exiting");
            lost_leadership = true;
            shutdown.cancel();
        }
        () = shutdown.cancelled() => {}
    }
    ready.store(false, Ordering::Relaxed);
    controllers.await.context("controller task failed")?;
    leadership.release().await;
    admin.await.context("admin task failed")??;
    if lost_leadership {
        anyhow::bail!("lost leadership");
    }
    tracing::info!("Stopped");
    Ok(())
}

/// The manager's metrics, registered under the `capow` prefix of `registry`.
struct Metrics {
    registry: Registry,
    openstack: OpenStackMetrics,
    reconcile: ReconcileMetrics,
    orphan: controllers::orphans::OrphanMetrics,
    rpc: crate::autoscaler::service::RpcMetrics,
    annotation: crate::autoscaler::report::InvalidAnnotationMetrics,
    lifecycle: controllers::lifecycle::LifecycleMetrics,
    /// Node-group gauges, read from the externalgrpc server's caches at scrape time.
    node_groups: crate::autoscaler::gauges::NodeGroupCollector,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("capow");
        let openstack = OpenStackMetrics::default();
        openstack.register(registry.sub_registry_with_prefix("openstack"));
        let reconcile = ReconcileMetrics::default();
        reconcile.register(registry.sub_registry_with_prefix("reconcile"));
        let orphan = controllers::orphans::OrphanMetrics::default();
        orphan.register(&mut registry);
        let rpc = crate::autoscaler::service::RpcMetrics::default();
        rpc.register(registry.sub_registry_with_prefix("grpc_server"));
        let annotation = crate::autoscaler::report::InvalidAnnotationMetrics::default();
        annotation.register(registry.sub_registry_with_prefix("autoscaler"));
        let lifecycle = controllers::lifecycle::LifecycleMetrics::default();
        lifecycle.register(registry.sub_registry_with_prefix("lifecycle"));
        let node_groups = crate::autoscaler::gauges::NodeGroupCollector::default();
        registry.register_collector(Box::new(node_groups.clone()));
        Self {
            registry,
            openstack,
            reconcile,
            orphan,
            rpc,
            annotation,
            lifecycle,
            node_groups,
        }
    }
}

/// The OpenStack sessions, with the client settings of the `--openstack-*` flags.
fn clouds(args: &cli::OpenStackArgs, metrics: OpenStackMetrics) -> Clouds {
    Clouds::new(
        ClientOptions {
            request_timeout: args.openstack_timeout,
            requests_per_second: args.openstack_requests_per_second,
            burst: args.openstack_burst,
            max_in_flight: args.openstack_max_in_flight,
            lookup_cache_ttl: args.openstack_lookup_cache_ttl,
            ..ClientOptions::default()
        },
        metrics,
    )
}

/// The controllers' timings and settings from the manager's flags.
fn controller_config(
    controller: &cli::ControllerArgs,
    autoscaler: &cli::AutoscalerArgs,
    kube: crate::kubeapi::Timeouts,
) -> ControllerConfig {
    ControllerConfig {
        build_poll: controller.build_poll_interval,
        resync: controller.resync_interval,
        concurrency: controller.concurrency,
        server_create_settle: controller.server_create_settle,
        reconcile_timeout: controller.reconcile_timeout,
        port_creation: controller.port_creation,
        kube,
        managed_autoscaler: controllers::ManagedAutoscalerConfig {
            image_repository: Some(autoscaler.autoscaler_image_repository.clone())
                .filter(|r| !r.is_empty()),
            credentials_mount_dir: autoscaler.autoscaler_mount_dir.clone(),
            credentials_published: autoscaler.autoscaler_address.is_some(),
        },
        fault: controller
            .fault_injection
            .map(|point| controllers::FaultInjection {
                point,
                hit: controller.fault_injection_hit.max(1),
                hits: Arc::default(),
            }),
        ..ControllerConfig::default()
    }
}

/// The leader-election Lease this replica holds, if election is on.
struct Leadership(
    Option<(
        tokio::sync::watch::Receiver<bool>,
        tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
    )>,
);

impl Leadership {
    /// Without election, at once (this replica reconciles); with it, once the Lease is held.
    /// `None` when shutdown comes first.
    ///
    /// # Errors
    /// The Lease cannot be set up ([`lease_error`]) or the election stopped.
    async fn acquire(
        client: &kube::Client,
        leader: cli::LeaderArgs,
        namespace: Option<&str>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Self>> {
        if !leader.leader_elect {
            return Ok(Some(Self(None)));
        }
        let lease_ns = leader
            .leader_election_namespace
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| namespace.map(str::to_owned))
            .unwrap_or_else(|| "default".into());
        let identity =
            std::env::var("POD_NAME").unwrap_or_else(|_| format!("capow-{}", std::process::id()));
        let lease_ns_for_errors = lease_ns.clone();
        let manager = kube_lease_manager::LeaseManagerBuilder::new(
            client.clone(),
            &leader.leader_election_id,
        )
        .with_namespace(lease_ns)
        .with_identity(identity)
        .with_duration(leader.leader_lease_seconds)
        .with_grace(leader.leader_lease_seconds / 3)
        .build()
        .await
        .map_err(|e| lease_error(&lease_ns_for_errors, e))?;
        let (mut channel, task) = manager.watch().await;
        tracing::info!("Waiting for leadership");
        loop {
            if *channel.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = channel.changed() => changed.context("leader election stopped")?,
                () = shutdown.cancelled() => return Ok(None),
            }
        }
        tracing::info!("Acquired leadership");
        Ok(Some(Self(Some((channel, task)))))
    }

    /// Resolves when the Lease is lost (never without election): losing it ends the process
    /// (the Deployment restarts it as a follower).
    async fn lost(&mut self) {
        match &mut self.0 {
            Some((channel, _)) => loop {
                if channel.changed().await.is_err() || !*channel.borrow_and_update() {
                    break;
                }
            },
            None => std::future::pending::<()>().await,
        }
    }

    /// Releases the Lease, best effort.
    async fn release(self) {
        if let Some((channel, task)) = self.0 {
            drop(channel);
            if let Ok(Ok(manager)) = task.await {
                let _ = manager.release().await;
            }
        }
    }
}

/// What the leader runs besides the controllers' watches: the orphan sweep and the lifecycle
/// controller's settings, with their metrics.
struct Background {
    sweep: controllers::orphans::SweepConfig,
    orphan_metrics: controllers::orphans::OrphanMetrics,
    lifecycle: controllers::lifecycle::LifecycleConfig,
    lifecycle_metrics: controllers::lifecycle::LifecycleMetrics,
}

/// Runs the leader's work until `token` is cancelled: the credentials publisher (with
/// `publisher`, the CA and settings of [`start_autoscaler`]), the machine, cluster, template
/// and lifecycle controllers and the orphan sweep.
fn spawn_controllers(
    ctx: Arc<controllers::Context>,
    caches: crate::caches::Caches,
    namespace: Option<String>,
    publisher: Option<(Arc<crate::tls::Ca>, crate::tls::PublishSettings)>,
    background: Background,
    token: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let ns = namespace.as_deref();
        let credentials = async {
            if let Some((ca, settings)) = publisher {
                crate::autoscaler::credentials::run(
                    ctx.client.clone(),
                    &caches,
                    ca,
                    settings,
                    token.clone().cancelled_owned(),
                )
                .await;
            }
        };
        tokio::join!(
            credentials,
            controllers::machine::run_controller(
                ctx.clone(),
                &caches,
                token.clone().cancelled_owned()
            ),
            controllers::cluster::run_controller(
                ctx.clone(),
                &caches,
                ns,
                token.clone().cancelled_owned()
            ),
            controllers::machine_template::run_controller(
                ctx.clone(),
                &caches,
                token.clone().cancelled_owned()
            ),
            controllers::orphans::run(
                ctx.clone(),
                namespace.clone(),
                background.sweep,
                background.orphan_metrics,
                token.clone().cancelled_owned()
            ),
            controllers::lifecycle::run_controller(
                ctx.clone(),
                &caches,
                background.lifecycle,
                background.lifecycle_metrics,
                token.clone()
            ),
        );
    })
}

/// A leader-election setup error in words: a Lease namespace that does not exist or that the
/// manager may not use names the namespace and the flag that chooses it.
fn lease_error(namespace: &str, e: kube_lease_manager::LeaseManagerError) -> anyhow::Error {
    use kube_lease_manager::LeaseManagerError as E;
    match &e {
        E::KubeError(kube::Error::Api(s)) if s.code == 404 => anyhow::anyhow!(
            "leader election cannot keep its Lease in namespace {namespace:?}: the namespace does not exist; \
             set --leader-election-namespace (or POD_NAMESPACE) to capow's own namespace"
        ),
        E::KubeError(kube::Error::Api(s)) if s.code == 403 => anyhow::anyhow!(
            "leader election cannot keep its Lease in namespace {namespace:?}: the manager may not use Leases there \
             (the namespace does not exist, or capow's leader-election Role is not bound in it); \
             set --leader-election-namespace (or POD_NAMESPACE) to capow's own namespace"
        ),
        E::KubeError(k) => anyhow::anyhow!(
            "failed to set up leader election in namespace {namespace:?}: {}",
            crate::controllers::describe_kube_error(k)
        ),
        other => {
            anyhow::anyhow!("failed to set up leader election in namespace {namespace:?}: {other}")
        }
    }
}

/// Starts the externalgrpc server (TLS unless `--autoscaler-insecure`), the serving
/// certificate's rotation and the sweeper of stray delete-machine marks, and attaches the
/// node-group gauges to the server's watch caches; returns what the
/// credentials publisher needs (TLS only).
async fn start_autoscaler(
    client: &kube::Client,
    caches: &crate::caches::Caches,
    addr: std::net::SocketAddr,
    args: &cli::AutoscalerArgs,
    (metrics, annotation_metrics, node_groups): (
        crate::autoscaler::service::RpcMetrics,
        crate::autoscaler::report::InvalidAnnotationMetrics,
        &crate::autoscaler::gauges::NodeGroupCollector,
    ),
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(Arc<crate::tls::Ca>, crate::tls::PublishSettings)>> {
    use crate::autoscaler::{marks, report, server, service, sources};
    let stores = sources::Stores::from_caches(caches);
    let options = service::ServiceOptions {
        require_identity: !args.autoscaler_insecure,
        template: crate::autoscaler::node::TemplateOptions {
            gpu_label: args.gpu_label.clone(),
        },
    };
    let stores: Arc<dyn service::Snapshots> = Arc::new(stores);
    node_groups.attach(stores.clone());
    let reporter = report::AnnotationReporter::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "capow".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
        annotation_metrics,
    );
    let svc = service::CloudProviderService::new(stores.clone(), client.clone(), options, metrics)
        .with_reporter(Arc::new(reporter));
    tokio::spawn(marks::run_sweeper(
        client.clone(),
        stores,
        marks::SWEEP_INTERVAL,
        shutdown.clone(),
    ));
    let listener = server::bind(addr).await?;
    let port = listener.local_addr()?.port();
    let mut publish = None;
    let tls = if args.autoscaler_insecure {
        None
    } else {
        let system_ns = args
            .system_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "capow-system".into());
        let (ca, origin) =
            crate::tls::Ca::load_or_create(client, &system_ns, &args.ca_secret).await?;
        tracing::info!(secret = %format!("{system_ns}/{}", args.ca_secret), ?origin, "Loaded capow's CA");
        let ca = Arc::new(ca);
        let names = crate::tls::ServingNames::for_service(&args.autoscaler_service, &system_ns)
            .with_ips(args.autoscaler_ip_san.iter().copied());
        let serving = Arc::new(crate::tls::ServingCert::new(
            ca.clone(),
            names,
            crate::tls::CertPolicy::serving_default(),
        )?);
        let config = serving.server_config()?;
        let token = shutdown.clone();
        tokio::spawn(async move {
            serving
                .run(crate::tls::server::DEFAULT_CHECK_INTERVAL, token)
                .await
        });
        let address = args
            .autoscaler_published_address
            .clone()
            .unwrap_or_else(|| format!("{}.{system_ns}.svc:{port}", args.autoscaler_service));
        let mut settings = crate::tls::PublishSettings::new(address);
        settings.mount_dir = args.autoscaler_mount_dir.clone();
        publish = Some((ca, settings));
        Some(config)
    };
    let token = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = server::serve(listener, svc, tls, token.clone()).await {
            tracing::error!(error = %e, "externalgrpc server failed");
            token.cancel();
        }
    });
    Ok(publish)
}

async fn signal_shutdown(token: CancellationToken) {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("Shutdown requested");
    token.cancel();
}
