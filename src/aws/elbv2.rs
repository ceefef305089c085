//! ELBv2 (ALB/NLB) target groups through the AWS SDK, behind the same [`ElbApi`] as Classic ELB:
//! members are targets spelled `id:port` (see [`crate::key::Target`]).
//!
//! A target group is named in the keys and addressed by ARN in the API: the ARN (with the group's
//! port and target type) is resolved once and cached, and resolved again when AWS says the group
//! is gone. ELBv2 throttles per account and region separately from Classic ELB: its own buckets.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types::{
    TargetDescription, TargetHealthStateEnum, TargetTypeEnum,
};
use aws_sdk_elasticloadbalancingv2::Client;

use super::count::CountCalls;
use super::loader::{Loaders, Pulse, Reads};
use super::quota::elb::Call;
use super::regional::{PerRegion, RegionQuotas};
use super::{classify, AwsError, ElbApi, ErrorKind, Permit};
use crate::fence::{Fence, FenceCheck};
use crate::key::{Target, TargetId};
use crate::plan::{Health, Registered, TargetKind};
use aws_smithy_runtime_api::client::interceptors::SharedInterceptor;

/// What is cached of a target group.
#[derive(Clone, Debug)]
struct Group {
    arn: String,
    port: Option<u16>,
    kind: Option<TargetKind>,
}

pub struct SdkElbV2 {
    clients: Arc<PerRegion<Client>>,
    groups: Mutex<HashMap<(String, String), Group>>,
    /// Each region's DescribeTargetGroups, made together (see [`super::loader`]).
    loaders: Loaders<Describe>,
    /// Every change passes it as it is sent (an interceptor of the client), and is bounded by its
    /// timeouts.
    fence: Fence,
}

/// A read's configuration: retried by the SDK (see [`super::read_retries`]).
fn reads() -> aws_sdk_elasticloadbalancingv2::config::Builder {
    aws_sdk_elasticloadbalancingv2::config::Builder::default().retry_config(super::read_retries())
}

/// A change's timeouts under the fence (see [`crate::fence`]; the client checks the fence).
fn fenced<O, E, B>(
    op: aws_sdk_elasticloadbalancingv2::client::customize::CustomizableOperation<O, E, B>,
    fence: &Fence,
) -> aws_sdk_elasticloadbalancingv2::client::customize::CustomizableOperation<O, E, B> {
    match fence.timeouts() {
        Some(t) => op.config_override(
            aws_sdk_elasticloadbalancingv2::config::Builder::default().timeout_config(t),
        ),
        None => op,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SdkElbV2 {
    /// `share`: the part of AWS's quotas to use, per region, drawn from `quotas`, its account's;
    /// every change passes `fence`.
    pub fn new(
        config: aws_config::SdkConfig,
        share: f64,
        quotas: RegionQuotas,
        fence: Fence,
        count: Option<CountCalls>,
        pulse: Pulse,
    ) -> Self {
        let check = FenceCheck(fence.clone());
        SdkElbV2 {
            clients: Arc::new(PerRegion::new(share, quotas, move |region| {
                let mut conf = aws_sdk_elasticloadbalancingv2::config::Builder::from(&config)
                    .region(aws_config::Region::new(region.to_string()))
                    .interceptor(check.clone());
                if let Some(count) = &count {
                    conf.push_interceptor(SharedInterceptor::new(count.clone()));
                }
                Client::from_conf(conf.build())
            })),
            groups: Mutex::new(HashMap::new()),
            loaders: Loaders::new(pulse),
            fence,
        }
    }

    /// The group `name`: cached, or read with the others asked for meanwhile (see
    /// [`super::loader`]).
    async fn group(&self, region: &str, name: &str) -> Result<Group, AwsError> {
        let key = (region.to_string(), name.to_string());
        if let Some(g) = lock(&self.groups).get(&key) {
            return Ok(g.clone());
        }
        let target = format!("elbv2/{region}/{name}");
        let clients = self.clients.clone();
        let loader = self.loaders.region(region, || Describe {
            clients,
            region: region.to_string(),
        });
        let group = (loader.get(name).await).map_err(|e| AwsError { target, ..e })?;
        lock(&self.groups).insert(key, group.clone());
        Ok(group)
    }

    /// Forgets a group AWS says is gone, so that the next call resolves it again.
    fn forget_if_gone(&self, region: &str, name: &str, err: &AwsError) {
        if err.kind == ErrorKind::NotFound {
            lock(&self.groups).remove(&(region.to_string(), name.to_string()));
        }
    }

    fn descriptions(targets: &[Target]) -> Vec<TargetDescription> {
        targets
            .iter()
            .map(|t| {
                TargetDescription::builder()
                    .id(t.id_string())
                    .set_port(t.port.map(i32::from))
                    .build()
            })
            .collect()
    }

    async fn change(
        &self,
        region: &str,
        name: &str,
        targets: &[Target],
        register: bool,
        _paid: Permit,
    ) -> Result<(), AwsError> {
        let target = format!("elbv2/{region}/{name}");
        let group = self.group(region, name).await?;
        let list = Self::descriptions(targets);
        let client = self.clients.paid(region);
        let res = if register {
            let op = client
                .register_targets()
                .target_group_arn(&group.arn)
                .set_targets(Some(list))
                .customize();
            fenced(op, &self.fence)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify("RegisterTargets", &target, e))
        } else {
            let op = client
                .deregister_targets()
                .target_group_arn(&group.arn)
                .set_targets(Some(list))
                .customize();
            fenced(op, &self.fence)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify("DeregisterTargets", &target, e))
        };
        if let Err(e) = &res {
            self.forget_if_gone(region, name, e);
            self.clients.note(region, Call::Registration, e);
        }
        res
    }
}

/// DescribeTargetGroups, for a region's [`Loader`]: each group's ARN, port and target type.
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
    ) -> Result<(Vec<(String, Group)>, Option<String>), AwsError> {
        let target = match names {
            [] => format!("elbv2/{}", self.region),
            [name] => format!("elbv2/{}/{name}", self.region),
            _ => format!("elbv2/{} ({} target groups)", self.region, names.len()),
        };
        let mut op = self
            .clients
            .client(&self.region, Call::Describe)
            .await
            .describe_target_groups()
            .set_marker(marker);
        op = if names.is_empty() {
            op.page_size(page as i32)
        } else {
            op.set_names(Some(names.to_vec()))
        };
        let out = op
            .customize()
            .config_override(reads())
            .send()
            .await
            .map_err(|e| classify("DescribeTargetGroups", &target, e))
            .inspect_err(|e| self.clients.note(&self.region, Call::Describe, e))?;
        let found = out
            .target_groups()
            .iter()
            .filter_map(|tg| {
                let group = Group {
                    arn: tg.target_group_arn()?.to_string(),
                    port: tg.port().and_then(|p| u16::try_from(p).ok()),
                    kind: match tg.target_type() {
                        Some(TargetTypeEnum::Instance) => Some(TargetKind::Instance),
                        Some(TargetTypeEnum::Ip) => Some(TargetKind::Ip),
                        _ => None,
                    },
                };
                Some((tg.target_group_name()?.to_string(), group))
            })
            .collect();
        Ok((found, out.next_marker().map(str::to_string)))
    }
}

#[async_trait]
impl Reads for Describe {
    type Item = Group;

    async fn named(&self, names: &[String]) -> Result<Vec<(String, Group)>, AwsError> {
        Ok(self.call(names, None, 0).await?.0)
    }

    async fn page(
        &self,
        marker: Option<String>,
        size: usize,
    ) -> Result<(Vec<(String, Group)>, Option<String>), AwsError> {
        self.call(&[], marker, size).await
    }

    fn weight(_: &Group) -> usize {
        1
    }

    fn missing(&self, name: &str) -> AwsError {
        let message = format!("TargetGroupNotFound: {name} is not among the region's groups");
        AwsError::not_found("DescribeTargetGroups", name, message)
    }
}

/// A target as AWS reports it.
fn reported(id: &str, port: Option<i32>) -> Target {
    let id = match id.parse::<IpAddr>() {
        Ok(ip) => TargetId::Ip(ip),
        Err(_) => TargetId::Instance(id.to_string()),
    };
    Target {
        id,
        port: port.and_then(|p| u16::try_from(p).ok()),
    }
}

#[async_trait]
impl ElbApi for SdkElbV2 {
    async fn members(&self, region: &str, name: &str) -> Result<Registered, AwsError> {
        let target = format!("elbv2/{region}/{name}");
        let group = self.group(region, name).await?;
        let out = self
            .clients
            .client(region, Call::Describe)
            .await
            .describe_target_health()
            .target_group_arn(&group.arn)
            .customize()
            .config_override(reads())
            .send()
            .await
            .map_err(|e| classify("DescribeTargetHealth", &target, e))
            .inspect_err(|e| self.clients.note(region, Call::Describe, e))
            .inspect_err(|e| self.forget_if_gone(region, name, e))?;
        let (mut members, mut draining, mut health) = (
            BTreeSet::new(),
            BTreeSet::new(),
            std::collections::BTreeMap::new(),
        );
        for d in out.target_health_descriptions() {
            let Some(t) = d.target() else { continue };
            let Some(id) = t.id() else { continue };
            let s = reported(id, t.port().or(group.port.map(i32::from)));
            let state = d.target_health().and_then(|h| h.state());
            if let Some(state) = state {
                health.insert(
                    s.clone(),
                    Health {
                        state: state.as_str().to_string(),
                    },
                );
            }
            if state == Some(&TargetHealthStateEnum::Draining) {
                draining.insert(s);
            } else {
                members.insert(s);
            }
        }
        Ok(Registered {
            members,
            draining,
            default_port: group.port,
            kind: group.kind,
            health,
        })
    }

    async fn permit(&self, region: &str, _name: &str) -> Permit {
        self.clients.client(region, Call::Registration).await;
        Permit::granted()
    }

    async fn register(
        &self,
        region: &str,
        name: &str,
        targets: &[Target],
        paid: Permit,
    ) -> Result<(), AwsError> {
        self.change(region, name, targets, true, paid).await
    }

    async fn deregister(
        &self,
        region: &str,
        name: &str,
        targets: &[Target],
        paid: Permit,
    ) -> Result<(), AwsError> {
        self.change(region, name, targets, false, paid).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::parse_target;

    #[test]
    fn targets_are_read_and_sent_as_in_the_keys() {
        let spelled = |id, port| reported(id, port).to_string();
        assert_eq!(
            spelled("i-0abcdef0123456789", Some(80)),
            "i-0abcdef0123456789:80"
        );
        assert_eq!(spelled("10.0.0.5", Some(8080)), "10.0.0.5:8080");
        assert_eq!(spelled("2001:db8::1", Some(443)), "[2001:db8::1]:443");
        let d = SdkElbV2::descriptions(&[
            parse_target("[2001:db8::1]:443").unwrap(),
            parse_target("i-0abcdef0123456789:80").unwrap(),
        ]);
        assert_eq!(d[0].id(), Some("2001:db8::1"));
        assert_eq!(d[0].port(), Some(443));
        assert_eq!(d[1].id(), Some("i-0abcdef0123456789"));
    }
}
