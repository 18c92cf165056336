//! `xgrpc`: a command-line client of capow's externalgrpc server for the demo and for
//! operators: reads a cluster-autoscaler `--cloud-config` (as capow publishes it) and makes
//! one call, printing the answer readably.
//!
//! ```text
//! xgrpc --cloud-config FILE groups
//! xgrpc --cloud-config FILE nodes GROUP
//! xgrpc --cloud-config FILE template GROUP
//! xgrpc --cloud-config FILE increase GROUP DELTA
//! xgrpc --cloud-config FILE delete GROUP PROVIDER_ID
//! ```

use anyhow::{Context as _, Result};
use capow::autoscaler::proto::core_v1::Node;
use capow::autoscaler::proto::externalgrpc as pb;
use capow::autoscaler::proto::externalgrpc::cloud_provider_client::CloudProviderClient;
use clap::{Parser, Subcommand};
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

#[derive(Parser)]
struct Cli {
    /// The cluster-autoscaler cloud-config file (address, cert, key, cacert, grpc_timeout).
    #[arg(long)]
    cloud_config: std::path::PathBuf,
    #[command(subcommand)]
    call: Call,
}

#[derive(Subcommand)]
enum Call {
    /// Refresh, then NodeGroups.
    Groups,
    /// NodeGroupNodes.
    Nodes { group: String },
    /// NodeGroupTemplateNodeInfo.
    Template { group: String },
    /// NodeGroupIncreaseSize.
    Increase { group: String, delta: i32 },
    /// NodeGroupDeleteNodes with one node.
    Delete { group: String, provider_id: String },
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let text = std::fs::read_to_string(&cli.cloud_config).context("read the cloud-config")?;
    let cc = capow::tls::CloudConfig::from_yaml(&text)?;
    let read = |p: &str| std::fs::read_to_string(p).with_context(|| format!("read {p}"));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&cc.cacert)?))
        .identity(Identity::from_pem(read(&cc.cert)?, read(&cc.key)?))
        .domain_name(cc.host()?.to_owned());
    let timeout =
        humantime::parse_duration(&cc.grpc_timeout).unwrap_or(std::time::Duration::from_secs(5));
    let channel = Channel::from_shared(format!("https://{}", cc.address))?
        .tls_config(tls)?
        .timeout(timeout)
        .connect()
        .await?;
    let mut api = CloudProviderClient::new(channel);
    match cli.call {
        Call::Groups => {
            api.refresh(pb::RefreshRequest {}).await?;
            for g in api
                .node_groups(pb::NodeGroupsRequest {})
                .await?
                .into_inner()
                .node_groups
            {
                println!("{}  min {}  max {}", g.id, g.min_size, g.max_size);
            }
        }
        Call::Nodes { group } => {
            api.refresh(pb::RefreshRequest {}).await?;
            for i in api
                .node_group_nodes(pb::NodeGroupNodesRequest { id: group })
                .await?
                .into_inner()
                .instances
            {
                let status = i.status.unwrap_or_default();
                let state = pb::instance_status::InstanceState::try_from(status.instance_state)
                    .map(|s| s.as_str_name())
                    .unwrap_or("?");
                let error = status
                    .error_info
                    .map(|e| {
                        format!(
                            "  error {} (class {}): {}",
                            e.error_code, e.instance_error_class, e.error_message
                        )
                    })
                    .unwrap_or_default();
                println!("{}  {state}{error}", i.id);
            }
        }
        Call::Template { group } => {
            let t = api
                .node_group_template_node_info(pb::NodeGroupTemplateNodeInfoRequest { id: group })
                .await?
                .into_inner();
            let node = Node::decode(t.node_bytes.as_slice())?;
            let status = node.status.unwrap_or_default();
            let list = |m: &std::collections::HashMap<
                String,
                capow::autoscaler::proto::resource::Quantity,
            >| {
                let mut v: Vec<String> =
                    m.iter().map(|(k, q)| format!("{k}={}", q.string)).collect();
                v.sort();
                v.join(" ")
            };
            println!("capacity:    {}", list(&status.capacity));
            println!("allocatable: {}", list(&status.allocatable));
            let mut labels: Vec<String> = node
                .metadata
                .unwrap_or_default()
                .labels
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            labels.sort();
            println!("labels:      {}", labels.join(" "));
        }
        Call::Increase { group, delta } => {
            api.node_group_increase_size(pb::NodeGroupIncreaseSizeRequest { id: group, delta })
                .await?;
            println!("increased by {delta}");
        }
        Call::Delete { group, provider_id } => {
            let node = pb::ExternalGrpcNode {
                provider_id: provider_id.clone(),
                name: provider_id,
                ..Default::default()
            };
            api.node_group_delete_nodes(pb::NodeGroupDeleteNodesRequest {
                id: group,
                nodes: vec![node],
            })
            .await?;
            println!("deleted");
        }
    }
    Ok(())
}
