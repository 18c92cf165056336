//! Part 5 of the benchmark: from capow's `NodeGroupIncreaseSize` (the RPC a cluster-autoscaler
//! sends to scale up, over the published mTLS cloud-config) to the first `POST /servers` that
//! reaches Nova (seen at capow's counting proxy), over `count` scale-ups of one machine each.
//! In rounds of 10: ten scale-ups one after the other (each waits for its POST), then the
//! MachineDeployment back to 0 through its `scale` subresource, waiting until the servers and
//! Machines are gone, so at most 10 servers exist at a time. The path measured: capow's RPC
//! handler patches the `scale` subresource, CAPI's MachineDeployment and MachineSet controllers
//! create the Machine and the `OpenStackWorkerMachine`, capow reconciles it (finalizer,
//! lookups, port, intent write) and POSTs.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use capow::autoscaler::proto::externalgrpc as pb;
use capow::autoscaler::proto::externalgrpc::cloud_provider_client::CloudProviderClient;
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::fixture::{Boot, ProviderCluster, System};
use super::{Report, quantile, secs};
use crate::Poll;
use crate::cloud::AdminCloud;

/// A client of capow's externalgrpc server from its cloud-config, as cluster-autoscaler dials.
///
/// # Errors
/// When a file cannot be read or the connection fails.
pub async fn client(cc: &capow::tls::CloudConfig) -> Result<CloudProviderClient<Channel>> {
    let read = |p: &str| std::fs::read_to_string(p).with_context(|| format!("read {p}"));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&cc.cacert)?))
        .identity(Identity::from_pem(read(&cc.cert)?, read(&cc.key)?))
        .domain_name(cc.host()?.to_owned());
    let channel = Channel::from_shared(format!("https://{}", cc.address))?
        .tls_config(tls)?
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(CloudProviderClient::new(channel))
}

/// Runs `count` scale-ups (rounded up to rounds of 10) and records the latencies.
///
/// # Errors
/// When the cluster cannot be set up; a scale-up without a POST within 60 s ends the run.
pub async fn run(count: usize, capow_args: &[String], report: &Report) -> Result<Vec<f64>> {
    let admin = AdminCloud::login().await?;
    let boot = Boot::default();
    report.note("setting up the capow cluster for IncreaseSize → POST");
    let c = ProviderCluster::start(System::Capow, &boot, None, capow_args).await?;
    let result = rounds(&c, &admin, count, report).await;
    c.finish().await;
    let samples = result?;
    report.record(json!({
        "kind": "increase", "count": samples.len(),
        "p50_s": quantile(&samples, 0.5), "p90_s": quantile(&samples, 0.9),
        "p99_s": quantile(&samples, 0.99), "max_s": quantile(&samples, 1.0),
        "samples_s": samples}));
    Ok(samples)
}

async fn rounds(
    c: &ProviderCluster,
    admin: &AdminCloud,
    count: usize,
    report: &Report,
) -> Result<Vec<f64>> {
    let cc = c.cloud_config().await?;
    let mut api = client(&cc).await?;
    let group = c.node_group();
    // The node group is in capow's index.
    let poll = Poll::new(
        format!("node group {group} served"),
        Duration::from_secs(60),
    )
    .every(Duration::from_millis(500));
    loop {
        api.refresh(pb::RefreshRequest {}).await?;
        let groups = api
            .node_groups(pb::NodeGroupsRequest {})
            .await?
            .into_inner()
            .node_groups;
        if groups.iter().any(|g| g.id == group) {
            break;
        }
        poll.try_tick("").await?;
    }
    let prefix = format!("{}-", c.md);
    let mut samples = Vec::with_capacity(count);
    let rounds = count.div_ceil(10);
    for round in 0..rounds {
        let in_round = (count - round * 10).min(10);
        for _ in 0..in_round {
            let t0 = Instant::now();
            api.node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
                id: group.clone(),
                delta: 1,
            })
            .await
            .context("NodeGroupIncreaseSize")?;
            let a = Poll::new("POST /servers after IncreaseSize", Duration::from_secs(60))
                .every(Duration::from_millis(5))
                .log_tail(c.log(), 20)
                .try_until(|| async {
                    c.proxy
                        .arrivals_since(t0)
                        .into_iter()
                        .find(|a| a.service == "compute" && a.operation == "POST /servers")
                })
                .await?;
            samples.push(secs(a.at.duration_since(t0)));
        }
        report.note(&format!(
            "increase: round {round}: p50 so far {:.3} s",
            quantile(&samples, 0.5)
        ));
        c.set_replicas(0).await?;
        Poll::new(
            format!("the servers deleted after round {round}"),
            Duration::from_secs(180),
        )
        .every(Duration::from_millis(500))
        .try_until(|| async {
            let servers = super::nova::servers_named(admin, &prefix)
                .await
                .map(|s| s.len())
                .unwrap_or(usize::MAX);
            servers == 0 && c.machines().await.is_ok_and(|(all, _)| all == 0)
        })
        .await?;
    }
    Ok(samples)
}
