//! Classic ELB through the AWS SDK: one client per region, made on first use.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_elasticloadbalancing::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_elasticloadbalancing::types::Instance;
use aws_sdk_elasticloadbalancing::Client;

use super::count::CountCalls;
use super::loader::{Loader, Loaders, Pulse, Reads, BY_NAME};
use super::quota::elb::Call;
use super::regional::{PerRegion, RegionQuotas};
use super::{classify, AwsError, ElbApi, Permit};
use crate::fence::{Fence, FenceCheck};
use crate::key::Target;
use crate::plan::{Health, Registered};
use aws_smithy_runtime_api::client::interceptors::SharedInterceptor;

pub struct SdkElb {
    clients: Arc<PerRegion<Client>>,
    /// Each region's reads, made together (see [`super::loader`]).
    loaders: Loaders<Describe>,
    /// Every change passes it as it is sent (an interceptor of the client), and is bounded by its
    /// timeouts.
    fence: Fence,
}

/// A read's configuration: retried by the SDK (see [`super::read_retries`]).
fn reads() -> aws_sdk_elasticloadbalancing::config::Builder {
    aws_sdk_elasticloadbalancing::config::Builder::default().retry_config(super::read_retries())
}

/// A change's timeouts under the fence (see [`crate::fence`]; the client checks the fence).
fn fenced<O, E, B>(
    op: aws_sdk_elasticloadbalancing::client::customize::CustomizableOperation<O, E, B>,
    fence: &Fence,
) -> aws_sdk_elasticloadbalancing::client::customize::CustomizableOperation<O, E, B> {
    match fence.timeouts() {
        Some(t) => op.config_override(
            aws_sdk_elasticloadbalancing::config::Builder::default().timeout_config(t),
        ),
        None => op,
    }
}

impl SdkElb {
    /// `share`: the part of AWS's quotas to use, drawn from `quotas`, its account's (ELB
    /// throttles per account and region); every change passes `fence`.
    pub fn new(
        config: aws_config::SdkConfig,
        share: f64,
        quotas: RegionQuotas,
        fence: Fence,
        count: Option<CountCalls>,
        pulse: Pulse,
    ) -> Self {
        let check = FenceCheck(fence.clone());
        SdkElb {
            clients: Arc::new(PerRegion::new(share, quotas, move |region| {
                let mut conf = aws_sdk_elasticloadbalancing::config::Builder::from(&config)
                    .region(aws_config::Region::new(region.to_string()))
                    .interceptor(check.clone());
                if let Some(count) = &count {
                    conf.push_interceptor(SharedInterceptor::new(count.clone()));
                }
                Client::from_conf(conf.build())
            })),
            loaders: Loaders::new(pulse),
            fence,
        }
    }
}

impl SdkElb {
    fn loader(&self, region: &str) -> Arc<Loader<Describe>> {
        let clients = self.clients.clone();
        self.loaders.region(region, || Describe {
            clients,
            region: region.to_string(),
        })
    }

    /// The result of the change `op` of `region`'s ELB `name`, as an [`AwsError`]; a throttle
    /// slows the region's changes.
    fn changed<E>(
        &self,
        region: &str,
        name: &str,
        op: &'static str,
        res: Result<(), SdkError<E>>,
    ) -> Result<(), AwsError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        res.map_err(|e| classify(op, format!("elb/{region}/{name}"), e))
            .inspect_err(|e| self.clients.note(region, Call::Registration, e))
    }
}

/// DescribeLoadBalancers, for a region's [`Loader`]: what is registered with each ELB.
struct Describe {
    clients: Arc<PerRegion<Client>>,
    region: String,
}

impl Describe {
    async fn call(
        &self,
        names: &[String],
        marker: Option<String>,
        page: usize,
    ) -> Result<(Vec<(String, Registered)>, Option<String>), AwsError> {
        let target = match names {
            [] => format!("elb/{}", self.region),
            [name] => format!("elb/{}/{name}", self.region),
            _ => format!("elb/{} ({} ELBs)", self.region, names.len()),
        };
        let mut op = self
            .clients
            .client(&self.region, Call::Describe)
            .await
            .describe_load_balancers()
            .set_marker(marker);
        op = if names.is_empty() {
            op.page_size(page as i32)
        } else {
            op.set_load_balancer_names(Some(names.to_vec()))
        };
        let out = op
            .customize()
            .config_override(reads())
            .send()
            .await
            .map_err(|e| classify("DescribeLoadBalancers", &target, e))
            .inspect_err(|e| self.clients.note(&self.region, Call::Describe, e))?;
        let found = out
            .load_balancer_descriptions()
            .iter()
            .filter_map(|lb| {
                let members: BTreeSet<Target> = lb
                    .instances()
                    .iter()
                    .filter_map(|i| i.instance_id().map(Target::instance))
                    .collect();
                let registered = Registered {
                    members,
                    ..Registered::default()
                };
                Some((lb.load_balancer_name()?.to_string(), registered))
            })
            .collect();
        Ok((found, out.next_marker().map(str::to_string)))
    }
}

#[async_trait]
impl Reads for Describe {
    type Item = Registered;

    async fn named(&self, names: &[String]) -> Result<Vec<(String, Registered)>, AwsError> {
        debug_assert!(!names.is_empty() && names.len() <= BY_NAME);
        Ok(self.call(names, None, 0).await?.0)
    }

    async fn page(
        &self,
        marker: Option<String>,
        size: usize,
    ) -> Result<(Vec<(String, Registered)>, Option<String>), AwsError> {
        self.call(&[], marker, size).await
    }

    fn weight(item: &Registered) -> usize {
        item.members.len()
    }

    fn missing(&self, name: &str) -> AwsError {
        let message = format!("LoadBalancerNotFound: {name} is not among the region's ELBs");
        AwsError::not_found("DescribeLoadBalancers", name, message)
    }
}

/// Classic ELB takes instances only: an IP target can't be a member (the key grammar has none).
fn instances(members: &[Target]) -> Vec<Instance> {
    members
        .iter()
        .map(|m| Instance::builder().instance_id(m.id_string()).build())
        .collect()
}

#[async_trait]
impl ElbApi for SdkElb {
    async fn members(&self, region: &str, name: &str) -> Result<Registered, AwsError> {
        let target = format!("elb/{region}/{name}");
        (self.loader(region).get(name).await).map_err(|e| AwsError { target, ..e })
    }

    async fn health(&self, region: &str, name: &str) -> Result<BTreeMap<Target, Health>, AwsError> {
        let out = self
            .clients
            .client(region, Call::Describe)
            .await
            .describe_instance_health()
            .load_balancer_name(name)
            .customize()
            .config_override(reads())
            .send()
            .await
            .map_err(|e| classify("DescribeInstanceHealth", format!("elb/{region}/{name}"), e))
            .inspect_err(|e| self.clients.note(region, Call::Describe, e))?;
        Ok(out
            .instance_states()
            .iter()
            .filter_map(|i| {
                let state = i.state()?.to_string();
                Some((Target::instance(i.instance_id()?), Health { state }))
            })
            .collect())
    }

    async fn permit(&self, region: &str, _name: &str) -> Permit {
        self.clients.client(region, Call::Registration).await;
        Permit::granted()
    }

    async fn register(
        &self,
        region: &str,
        name: &str,
        ids: &[Target],
        _paid: Permit,
    ) -> Result<(), AwsError> {
        let op = self
            .clients
            .paid(region)
            .register_instances_with_load_balancer();
        let op = op
            .load_balancer_name(name)
            .set_instances(Some(instances(ids)));
        let res = fenced(op.customize(), &self.fence).send().await.map(drop);
        self.changed(region, name, "RegisterInstancesWithLoadBalancer", res)
    }

    async fn deregister(
        &self,
        region: &str,
        name: &str,
        ids: &[Target],
        _paid: Permit,
    ) -> Result<(), AwsError> {
        let op = self
            .clients
            .paid(region)
            .deregister_instances_from_load_balancer();
        let op = op
            .load_balancer_name(name)
            .set_instances(Some(instances(ids)));
        let res = fenced(op.customize(), &self.fence).send().await.map(drop);
        self.changed(region, name, "DeregisterInstancesFromLoadBalancer", res)
    }
}
