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

    let mut registry = Registry::with_prefix("capow");
    let openstack_metrics = OpenStackMetrics::default();
    openstack_metrics.register(registry.sub_registry_with_prefix("openstack"));
    let reconcile_metrics = ReconcileMetrics::default();
    reconcile_metrics.register(registry.sub_registry_with_prefix("reconcile"));
    let orphan_metrics = controllers::orphans::OrphanMetrics::default();
    orphan_metrics.register(&mut registry);
    let rpc_metrics = crate::autoscaler::service::RpcMetrics::default();
    rpc_metrics.register(registry.sub_registry_with_prefix("grpc_server"));
    let annotation_metrics = crate::autoscaler::report::InvalidAnnotationMetrics::default();
    annotation_metrics.register(registry.sub_registry_with_prefix("autoscaler"));
    let lifecycle_metrics = controllers::lifecycle::LifecycleMetrics::default();
    lifecycle_metrics.register(registry.sub_registry_with_prefix("lifecycle"));
    // Node-group gauges, read from the externalgrpc server's caches at scrape time.
    let node_groups = crate::autoscaler::gauges::NodeGroupCollector::default();
    registry.register_collector(Box::new(node_groups.clone()));
    let lifecycle_config = controllers::lifecycle::LifecycleConfig {
        max_node_age_floor: lifecycle.max_node_age_floor,
    };

    let clouds = Arc::new(Clouds::new(
        ClientOptions {
            request_timeout: openstack.openstack_timeout,
            requests_per_second: openstack.openstack_requests_per_second,
            burst: openstack.openstack_burst,
            max_in_flight: openstack.openstack_max_in_flight,
            lookup_cache_ttl: openstack.openstack_lookup_cache_ttl,
            ..ClientOptions::default()
        },
        openstack_metrics,
    ));
    let config = ControllerConfig {
        build_poll: controller.build_poll_interval,
        resync: controller.resync_interval,
        concurrency: controller.concurrency,
        server_create_settle: controller.server_create_settle,
        reconcile_timeout: controller.reconcile_timeout,
        kube: kube_timeouts,
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
    };
    let sweep = controllers::orphans::SweepConfig {
        mode: controller.orphan_sweep,
        interval: controller.orphan_sweep_interval,
        grace: controller.orphan_grace_period,
    };
    let ctx = Arc::new(controllers::Context::new(
        client.clone(),
        clouds,
        reconcile_metrics,
        config,
        std::env::var("POD_NAME").ok(),
    ));

    let shutdown = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let admin = tokio::spawn(admin::serve(
        admin_address,
        admin::AdminState {
            registry: Arc::new(registry),
            ready: ready.clone(),
        },
        shutdown.clone(),
    ));
    tokio::spawn(signal_shutdown(shutdown.clone()));

    // The externalgrpc server answers on every replica (reads come from local caches); only
    // the leader publishes credentials and reconciles.
    let publisher = match autoscaler.autoscaler_address {
        Some(addr) => start_autoscaler(
            &client,
            namespace.as_deref(),
            addr,
            &autoscaler,
            (rpc_metrics, annotation_metrics, &node_groups),
            &kube_timeouts.watcher_config(),
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

    // Leadership: without election this replica reconciles at once; with it, only after the
    // Lease is held, and losing it ends the process (the Deployment restarts it as a follower).
    let mut leadership = None;
    if leader.leader_elect {
        let lease_ns = leader
            .leader_election_namespace
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| namespace.clone())
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
                () = shutdown.cancelled() => return Ok(()),
            }
        }
        tracing::info!("Acquired leadership");
        leadership = Some((channel, task));
    }

    let controller = {
        let token = shutdown.clone();
        let ctx = ctx.clone();
        let namespace = namespace.clone();
        tokio::spawn(async move {
            let ns = namespace.as_deref();
            let credentials = async {
                if let Some((ca, settings)) = publisher {
                    crate::autoscaler::credentials::run(
                        ctx.client.clone(),
                        ns,
                        ca,
                        settings,
                        ctx.config.kube.watcher_config(),
                        token.clone().cancelled_owned(),
                    )
                    .await;
                }
            };
            tokio::join!(
                credentials,
                controllers::machine::run_controller(
                    ctx.clone(),
                    ns,
                    token.clone().cancelled_owned()
                ),
                controllers::cluster::run_controller(
                    ctx.clone(),
                    ns,
                    token.clone().cancelled_owned()
                ),
                controllers::machine_template::run_controller(
                    ctx.clone(),
                    ns,
                    token.clone().cancelled_owned()
                ),
                controllers::orphans::run(
                    ctx.clone(),
                    namespace.clone(),
                    sweep,
                    orphan_metrics,
                    token.clone().cancelled_owned()
                ),
                controllers::lifecycle::run_controller(
                    ctx.clone(),
                    lifecycle_config,
                    lifecycle_metrics,
                    ns,
                    token.clone()
                ),
            );
        })
    };

    let lost = async {
        match &mut leadership {
            Some((channel, _)) => loop {
                if channel.changed().await.is_err() || !*channel.borrow_and_update() {
                    break;
                }
            },
            None => std::future::pending::<()>().await,
        }
    };
    let mut lost_leadership = false;
    tokio::select! {
        () = lost => {
            tracing::error!("Lost leadership; exiting");
            lost_leadership = true;
            shutdown.cancel();
        }
        () = shutdown.cancelled() => {}
    }
    ready.store(false, Ordering::Relaxed);
    controller.await.context("controller task failed")?;
    if let Some((channel, task)) = leadership {
        drop(channel);
        if let Ok(Ok(manager)) = task.await {
            let _ = manager.release().await;
        }
    }
    admin.await.context("admin task failed")??;
    if lost_leadership {
        anyhow::bail!("lost leadership");
    }
    tracing::info!("Stopped");
    Ok(())
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
    namespace: Option<&str>,
    addr: std::net::SocketAddr,
    args: &cli::AutoscalerArgs,
    (metrics, annotation_metrics, node_groups): (
        crate::autoscaler::service::RpcMetrics,
        crate::autoscaler::report::InvalidAnnotationMetrics,
        &crate::autoscaler::gauges::NodeGroupCollector,
    ),
    watch: &kube::runtime::watcher::Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(Arc<crate::tls::Ca>, crate::tls::PublishSettings)>> {
    use crate::autoscaler::{marks, report, server, service, sources};
    let stores = sources::Stores::start_with(client, namespace, shutdown, watch);
    tokio::time::timeout(std::time::Duration::from_secs(120), stores.ready())
        .await
        .context("the watches of the autoscaler index did not sync within 120 s")??;
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
