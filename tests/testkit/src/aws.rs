//! The test's own AWS clients, pointed at moto.

use std::collections::BTreeMap;

use aws_sdk_elasticloadbalancing as elb;
use aws_sdk_route53 as r53;

use crate::{free_port, Moto};

/// The test's own AWS clients, pointed at moto.
pub struct Aws {
    config: aws_config::SdkConfig,
    pub route53: r53::Client,
}

impl Aws {
    pub async fn new(moto: &Moto) -> Aws {
        Aws::at(&moto.url).await
    }

    pub async fn at(url: &str) -> Aws {
        Aws::with_retries(url, aws_config::retry::RetryConfig::standard()).await
    }

    /// Clients that make each call once: what a throttling proxy answers is seen as it is.
    pub async fn without_retries(url: &str) -> Aws {
        Aws::with_retries(url, aws_config::retry::RetryConfig::disabled()).await
    }

    /// Clients of another account: STS AssumeRole of `role_arn` (moto keeps the resources of
    /// each account apart; the test's own keys are account 123456789012's).
    pub async fn assuming(moto: &Moto, role_arn: &str) -> Aws {
        let base = Aws::new(moto).await.config;
        let provider = aws_config::sts::AssumeRoleProvider::builder(role_arn)
            .session_name("lbmanager-test")
            .configure(&base)
            .build()
            .await;
        let config = base
            .to_builder()
            .credentials_provider(r53::config::SharedCredentialsProvider::new(provider))
            .build();
        Aws {
            route53: r53::Client::new(&config),
            config,
        }
    }

    async fn with_retries(url: &str, retries: aws_config::retry::RetryConfig) -> Aws {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(retries)
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(r53::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .load()
            .await;
        Aws {
            route53: r53::Client::new(&config),
            config,
        }
    }

    pub fn elb(&self, region: &str) -> elb::Client {
        let conf = elb::config::Builder::from(&self.config)
            .region(aws_config::Region::new(region.to_string()))
            .build();
        elb::Client::from_conf(conf)
    }

    pub async fn create_elb(&self, region: &str, name: &str) {
        self.elb(region)
            .create_load_balancer()
            .load_balancer_name(name)
            .listeners(
                elb::types::Listener::builder()
                    .protocol("HTTP")
                    .load_balancer_port(80)
                    .instance_protocol("HTTP")
                    .instance_port(80)
                    .build()
                    .unwrap(),
            )
            .availability_zones(format!("{region}a"))
            .send()
            .await
            .expect("create ELB");
    }

    /// The instances registered with an ELB, duplicates included (moto stores a re-registered
    /// instance twice, so a duplicate here means lbmanager registered what was there).
    pub async fn instances(&self, region: &str, name: &str) -> Vec<String> {
        let out = self
            .elb(region)
            .describe_load_balancers()
            .load_balancer_names(name)
            .send()
            .await
            .expect("describe ELB");
        let mut ids: Vec<String> = out.load_balancer_descriptions()[0]
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        ids.sort();
        ids
    }

    pub async fn register(&self, region: &str, name: &str, id: &str) {
        self.elb(region)
            .register_instances_with_load_balancer()
            .load_balancer_name(name)
            .instances(elb::types::Instance::builder().instance_id(id).build())
            .send()
            .await
            .expect("register");
    }

    pub fn elbv2(&self, region: &str) -> aws_sdk_elasticloadbalancingv2::Client {
        let conf = aws_sdk_elasticloadbalancingv2::config::Builder::from(&self.config)
            .region(aws_config::Region::new(region.to_string()))
            .build();
        aws_sdk_elasticloadbalancingv2::Client::from_conf(conf)
    }

    /// Creates a target group (`kind` "instance" or "ip") on `port` in `vpc`; returns its ARN.
    pub async fn create_target_group(
        &self,
        name: &str,
        kind: &str,
        port: i32,
        vpc: &str,
    ) -> String {
        use aws_sdk_elasticloadbalancingv2::types::{ProtocolEnum, TargetTypeEnum};
        let out = self
            .elbv2("us-east-1")
            .create_target_group()
            .name(name)
            .protocol(ProtocolEnum::Http)
            .port(port)
            .vpc_id(vpc)
            .target_type(TargetTypeEnum::from(kind))
            .send()
            .await
            .expect("create target group");
        out.target_groups()[0]
            .target_group_arn()
            .unwrap()
            .to_string()
    }

    /// A target group's targets as `id:port`, sorted.
    pub async fn targets(&self, arn: &str) -> Vec<String> {
        let out = self
            .elbv2("us-east-1")
            .describe_target_health()
            .target_group_arn(arn)
            .send()
            .await
            .expect("describe target health");
        let mut list: Vec<String> = out
            .target_health_descriptions()
            .iter()
            .filter_map(|d| d.target())
            .map(|t| {
                let id = t.id().unwrap_or_default();
                match id.parse::<std::net::Ipv6Addr>() {
                    Ok(ip) => format!("[{ip}]:{}", t.port().unwrap_or_default()),
                    Err(_) => format!("{id}:{}", t.port().unwrap_or_default()),
                }
            })
            .collect();
        list.sort();
        list
    }

    /// Creates a hosted zone and returns its bare id.
    pub async fn create_zone(&self, name: &str) -> String {
        let out = self
            .route53
            .create_hosted_zone()
            .name(name)
            .caller_reference(format!("{name}-{}", free_port()))
            .send()
            .await
            .expect("create zone");
        out.hosted_zone()
            .unwrap()
            .id()
            .trim_start_matches("/hostedzone/")
            .to_string()
    }

    /// Fills `zone` with `n` TXT record sets of another tool (`other-N.DOMAIN`), 1,000 a call
    /// (moto slows down as a zone grows: build a big zone once per test).
    pub async fn fill_zone(&self, zone: &str, domain: &str, n: usize) {
        use r53::types::{Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet};
        for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
            let changes = chunk
                .iter()
                .map(|i| {
                    let set = ResourceRecordSet::builder()
                        .name(format!("other-{i}.{domain}."))
                        .r#type(r53::types::RrType::Txt)
                        .ttl(300)
                        .resource_records(
                            ResourceRecord::builder()
                                .value("\"not lbmanager's\"")
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap();
                    Change::builder()
                        .action(ChangeAction::Create)
                        .resource_record_set(set)
                        .build()
                        .unwrap()
                })
                .collect();
            self.route53
                .change_resource_record_sets()
                .hosted_zone_id(zone)
                .change_batch(
                    ChangeBatch::builder()
                        .set_changes(Some(changes))
                        .build()
                        .unwrap(),
                )
                .send()
                .await
                .expect("fill the zone");
        }
    }

    /// The A/AAAA record sets of `fqdn`: type → (ttl, sorted values).
    pub async fn records(&self, zone: &str, fqdn: &str) -> BTreeMap<String, (i64, Vec<String>)> {
        let mut found = BTreeMap::new();
        for set in self.sets_from(zone, fqdn).await {
            if set.set_identifier().is_some() {
                continue;
            }
            let t = set.r#type().as_str().to_string();
            if set.name().trim_end_matches('.') != fqdn || !(t == "A" || t == "AAAA") {
                continue;
            }
            let mut values: Vec<String> = set
                .resource_records()
                .iter()
                .map(|r| r.value().to_string())
                .collect();
            values.sort();
            found.insert(t, (set.ttl().unwrap_or_default(), values));
        }
        found
    }

    /// The multivalue answer record sets of `fqdn`: (set identifier, values, health check id).
    pub async fn multivalue(&self, zone: &str, fqdn: &str) -> Vec<(String, Vec<String>, String)> {
        let mut found = Vec::new();
        for set in self.sets_from(zone, fqdn).await {
            let (Some(id), true) = (
                set.set_identifier(),
                set.name().trim_end_matches('.') == fqdn,
            ) else {
                continue;
            };
            let values = set
                .resource_records()
                .iter()
                .map(|r| r.value().to_string())
                .collect();
            let check = set.health_check_id().unwrap_or_default().to_string();
            found.push((id.to_string(), values, check));
        }
        found.sort();
        found
    }

    /// The account's health checks: id → (caller reference, "TYPE IP:PORT PATH FQDN").
    pub async fn health_checks(&self) -> BTreeMap<String, (String, String)> {
        let out = self
            .route53
            .list_health_checks()
            .send()
            .await
            .expect("list health checks");
        out.health_checks()
            .iter()
            .map(|c| {
                let config = c.health_check_config().expect("a config");
                let what = format!(
                    "{} {}:{} {} {}",
                    config.r#type().as_str(),
                    config.ip_address().unwrap_or_default(),
                    config.port().unwrap_or_default(),
                    config.resource_path().unwrap_or_default(),
                    config.fully_qualified_domain_name().unwrap_or_default(),
                );
                (c.id().to_string(), (c.caller_reference().to_string(), what))
            })
            .collect()
    }

    /// One page of the record sets of `zone` from `fqdn` on.
    async fn sets_from(&self, zone: &str, fqdn: &str) -> Vec<r53::types::ResourceRecordSet> {
        let out = self
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(zone)
            .start_record_name(format!("{fqdn}."))
            .send()
            .await
            .expect("list record sets");
        out.resource_record_sets().to_vec()
    }
}
