//! Route53 through the AWS SDK. Route53 is global: one client serves every zone.

use async_trait::async_trait;
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, HealthCheckConfig, HealthCheckType,
    ResourceRecord, ResourceRecordSet, RrType,
};
use aws_sdk_route53::Client;

use super::count::CountCalls;
use super::quota::{self, route53::Call, route53::CheckCall, Quota};
use super::{classify, AwsError, ChangeId, ChangeState, ErrorKind, Route53Api};
use crate::fence::{Fence, FenceCheck};
use crate::health_check::{CheckSpec, HealthCheck, Protocol};
use crate::plan::{Action, RecordChange, RecordSet, RecordType};
use aws_smithy_runtime_api::client::interceptors::SharedInterceptor;

pub struct SdkRoute53 {
    client: Client,
    /// Route53 throttles per account, every zone and tool of the account together.
    quota: std::sync::Arc<Quota>,
    /// Every change passes it as it is sent (an interceptor of the client), and is bounded by its
    /// timeouts.
    fence: Fence,
}

impl SdkRoute53 {
    /// `quota`: its account's (Route53 throttles per account); every change passes `fence`.
    pub fn new(
        config: &aws_config::SdkConfig,
        quota: std::sync::Arc<Quota>,
        fence: Fence,
        count: Option<CountCalls>,
    ) -> Self {
        let mut conf =
            aws_sdk_route53::config::Builder::from(config).interceptor(FenceCheck(fence.clone()));
        if let Some(count) = count {
            conf.push_interceptor(SharedInterceptor::new(count));
        }
        SdkRoute53 {
            client: Client::from_conf(conf.build()),
            quota,
            fence,
        }
    }

    /// A throttle AWS answered paces the account's calls more slowly for a while.
    fn note(&self, err: &AwsError, call: Call) {
        if err.kind == ErrorKind::Throttled {
            quota::route53::throttled(&self.quota, call);
        }
    }
}

/// A read's configuration: retried by the SDK (see [`super::read_retries`]).
fn reads() -> aws_sdk_route53::config::Builder {
    aws_sdk_route53::config::Builder::default().retry_config(super::read_retries())
}

/// What a change batch draws from the change-throughput bucket: 1 for each CREATE or DELETE of
/// a record set, 2 for an UPSERT (Route53's "tokens consumed per operation").
pub fn change_tokens(changes: &[RecordChange]) -> f64 {
    changes
        .iter()
        .map(|c| if c.action == Action::Upsert { 2.0 } else { 1.0 })
        .sum()
}

/// Route53 answers names with a trailing dot and escapes `*` as `\052`.
fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.')
        .replace("\\052", "*")
        .to_ascii_lowercase()
}

fn rejected(target: &str, err: impl std::fmt::Display) -> AwsError {
    AwsError::new(
        ErrorKind::Rejected,
        "ChangeResourceRecordSets",
        target,
        err.to_string(),
    )
}

fn to_sdk(change: &RecordChange, target: &str) -> Result<Change, AwsError> {
    let records = change
        .set
        .values
        .iter()
        .map(|v| ResourceRecord::builder().value(v).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| rejected(target, e))?;
    let set = ResourceRecordSet::builder()
        .name(format!("{}.", change.set.name))
        .set_set_identifier(change.set.set_id.clone())
        .set_multi_value_answer(change.set.set_id.as_ref().map(|_| true))
        .set_health_check_id(change.set.health_check.clone())
        .r#type(match change.set.rtype {
            RecordType::A => RrType::A,
            RecordType::Aaaa => RrType::Aaaa,
        })
        .ttl(change.set.ttl)
        .set_resource_records(Some(records))
        .build()
        .map_err(|e| rejected(target, e))?;
    Change::builder()
        .action(match change.action {
            Action::Create => ChangeAction::Create,
            Action::Upsert => ChangeAction::Upsert,
            Action::Delete => ChangeAction::Delete,
        })
        .resource_record_set(set)
        .build()
        .map_err(|e| rejected(target, e))
}

/// One of lbmanager's checks as ListHealthChecks gives it (None: not of a shape lbmanager makes).
fn from_sdk(check: &aws_sdk_route53::types::HealthCheck) -> Option<HealthCheck> {
    let config = check.health_check_config()?;
    let protocol = match config.r#type() {
        HealthCheckType::Http => Protocol::Http,
        HealthCheckType::Https => Protocol::Https,
        HealthCheckType::Tcp => Protocol::Tcp,
        _ => return None,
    };
    let path = match protocol {
        Protocol::Tcp => None,
        _ => Some(config.resource_path().unwrap_or("/").to_string()),
    };
    Some(HealthCheck {
        id: check.id().to_string(),
        reference: check.caller_reference().to_string(),
        ip: config.ip_address()?.parse().ok()?,
        fqdn: normalise_name(config.fully_qualified_domain_name()?),
        spec: CheckSpec {
            protocol,
            port: u16::try_from(config.port()?).ok()?,
            path,
        },
    })
}

/// Where a page of ListResourceRecordSets starts: name, type, set identifier.
type Start = (String, RrType, Option<String>);

impl SdkRoute53 {
    /// Reads record sets from `start` (or the zone's beginning), page after page of `page_size`,
    /// while `more(next name)` holds; keeps the simple A/AAAA sets for which `keep(name)` holds.
    async fn list(
        &self,
        zone: &str,
        target: &str,
        mut start: Option<Start>,
        page_size: i32,
        keep: impl Fn(&str) -> bool,
        more: impl Fn(&str) -> bool,
    ) -> Result<Vec<RecordSet>, AwsError> {
        let mut found = Vec::new();
        loop {
            quota::route53::take(&self.quota, Call::List).await;
            let (name, rtype, identifier) = match start.take() {
                Some((n, t, i)) => (Some(n), Some(t), i),
                None => (None, None, None),
            };
            let out = self
                .client
                .list_resource_record_sets()
                .hosted_zone_id(zone)
                .set_start_record_name(name)
                .set_start_record_type(rtype)
                .set_start_record_identifier(identifier)
                .max_items(page_size)
                .customize()
                .config_override(reads())
                .send()
                .await
                .map_err(|e| classify("ListResourceRecordSets", target, e))
                .inspect_err(|e| self.note(e, Call::List))?;
            for set in out.resource_record_sets() {
                let name = normalise_name(set.name());
                let rtype = match set.r#type() {
                    RrType::A => RecordType::A,
                    RrType::Aaaa => RecordType::Aaaa,
                    _ => continue,
                };
                let values: Vec<String> = set
                    .resource_records()
                    .iter()
                    .map(|r| r.value().to_string())
                    .collect();
                // Multivalue answers of lbmanager's shape only: one value, its identifier.
                let ours = match set.set_identifier() {
                    None => true,
                    Some(id) => {
                        set.multi_value_answer() == Some(true)
                            && values.len() == 1
                            && values[0]
                                .parse::<std::net::IpAddr>()
                                .ok()
                                .map(|ip| ip.to_string())
                                == Some(id.to_string())
                    }
                };
                if !keep(&name) || !ours || set.alias_target().is_some() {
                    continue;
                }
                found.push(RecordSet {
                    name,
                    rtype,
                    ttl: set.ttl().unwrap_or_default(),
                    values,
                    set_id: set.set_identifier().map(str::to_string),
                    health_check: set.health_check_id().map(str::to_string),
                });
            }
            match (
                out.is_truncated(),
                out.next_record_name(),
                out.next_record_type(),
            ) {
                (true, Some(name), Some(rtype)) if more(&normalise_name(name)) => {
                    start = Some((
                        name.to_string(),
                        rtype.clone(),
                        out.next_record_identifier().map(str::to_string),
                    ));
                }
                _ => return Ok(found),
            }
        }
    }
}

#[async_trait]
impl Route53Api for SdkRoute53 {
    async fn record_sets(&self, zone: &str, fqdn: &str) -> Result<Vec<RecordSet>, AwsError> {
        // Records are sorted by name then type: start at (fqdn, A), page on while the next
        // record still has this name.
        let start = Some((format!("{fqdn}."), RrType::A, None));
        let target = format!("route53/{zone}/{fqdn}");
        self.list(zone, &target, start, 10, |n| n == fqdn, |n| n == fqdn)
            .await
    }

    async fn zone_record_sets(&self, zone: &str) -> Result<Vec<RecordSet>, AwsError> {
        // 300 is the most one page holds.
        let target = format!("route53/{zone}");
        self.list(zone, &target, None, 300, |_| true, |_| true)
            .await
    }

    async fn change(&self, zone: &str, changes: &[RecordChange]) -> Result<ChangeId, AwsError> {
        let target = format!("route53/{zone}");
        let sdk_changes = changes
            .iter()
            .map(|c| to_sdk(c, &target))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = ChangeBatch::builder()
            .comment("lbmanager")
            .set_changes(Some(sdk_changes))
            .build()
            .map_err(|e| rejected(&target, e))?;
        let n = change_tokens(changes);
        quota::route53::take(&self.quota, Call::Change(n)).await;
        let op = self
            .client
            .change_resource_record_sets()
            .hosted_zone_id(zone)
            .change_batch(batch)
            .customize();
        let op = match self.fence.timeouts() {
            Some(t) => {
                op.config_override(aws_sdk_route53::config::Builder::default().timeout_config(t))
            }
            None => op,
        };
        let out = op
            .send()
            .await
            .map_err(|e| classify("ChangeResourceRecordSets", &target, e))
            .inspect_err(|e| self.note(e, Call::Change(n)))?;
        Ok(out
            .change_info()
            .map(|info| info.id().to_string())
            .unwrap_or_default())
    }

    async fn zone_size(&self, zone: &str) -> Result<u64, AwsError> {
        let target = format!("route53/{zone}");
        quota::route53::take(&self.quota, Call::GetZone).await;
        let out = self
            .client
            .get_hosted_zone()
            .id(zone)
            .customize()
            .config_override(reads())
            .send()
            .await
            .map_err(|e| classify("GetHostedZone", &target, e))
            .inspect_err(|e| self.note(e, Call::GetZone))?;
        Ok(out
            .hosted_zone()
            .and_then(|z| z.resource_record_set_count())
            .unwrap_or_default()
            .max(0) as u64)
    }

    async fn health_checks(&self, prefix: &str) -> Result<Vec<HealthCheck>, AwsError> {
        let target = format!("route53 health checks {prefix}*");
        let mut found = Vec::new();
        let mut marker = None;
        loop {
            quota::route53::take(&self.quota, Call::Check(CheckCall::List)).await;
            let out = self
                .client
                .list_health_checks()
                .set_marker(marker.take())
                .max_items(1000)
                .customize()
                .config_override(reads())
                .send()
                .await
                .map_err(|e| classify("ListHealthChecks", &target, e))
                .inspect_err(|e| self.note(e, Call::Check(CheckCall::List)))?;
            for check in out.health_checks() {
                if !check.caller_reference().starts_with(prefix) {
                    continue;
                }
                if let Some(found_one) = from_sdk(check) {
                    found.push(found_one);
                }
            }
            match out.next_marker() {
                Some(next) if out.is_truncated() => marker = Some(next.to_string()),
                _ => return Ok(found),
            }
        }
    }

    async fn create_health_check(
        &self,
        reference: &str,
        fqdn: &str,
        ip: std::net::IpAddr,
        spec: &CheckSpec,
    ) -> Result<String, AwsError> {
        let target = format!("route53 health check of {ip} for {fqdn}");
        let config = HealthCheckConfig::builder()
            .ip_address(ip.to_string())
            .port(i32::from(spec.port))
            .r#type(match spec.protocol {
                Protocol::Http => HealthCheckType::Http,
                Protocol::Https => HealthCheckType::Https,
                Protocol::Tcp => HealthCheckType::Tcp,
            })
            .set_resource_path(spec.path.clone())
            .fully_qualified_domain_name(fqdn)
            .build()
            .map_err(|e| {
                AwsError::new(
                    ErrorKind::Rejected,
                    "CreateHealthCheck",
                    &target,
                    e.to_string(),
                )
            })?;
        quota::route53::take(&self.quota, Call::Check(CheckCall::Create)).await;
        let out = self
            .client
            .create_health_check()
            .caller_reference(reference)
            .health_check_config(config)
            .send()
            .await
            .map_err(|e| classify("CreateHealthCheck", &target, e))
            .inspect_err(|e| self.note(e, Call::Check(CheckCall::Create)))?;
        Ok(out
            .health_check()
            .map(|c| c.id().to_string())
            .unwrap_or_default())
    }

    async fn tag_health_check(
        &self,
        id: &str,
        tags: &[(&'static str, String)],
    ) -> Result<(), AwsError> {
        let target = format!("route53 health check {id}");
        let tags = tags
            .iter()
            .map(|(k, v)| {
                aws_sdk_route53::types::Tag::builder()
                    .key(*k)
                    .value(v)
                    .build()
            })
            .collect();
        quota::route53::take(&self.quota, Call::Check(CheckCall::Tag)).await;
        self.client
            .change_tags_for_resource()
            .resource_type(aws_sdk_route53::types::TagResourceType::Healthcheck)
            .resource_id(id)
            .set_add_tags(Some(tags))
            .send()
            .await
            .map(drop)
            .map_err(|e| classify("ChangeTagsForResource", &target, e))
            .inspect_err(|e| self.note(e, Call::Check(CheckCall::Tag)))
    }

    async fn delete_health_check(&self, id: &str) -> Result<(), AwsError> {
        let target = format!("route53 health check {id}");
        quota::route53::take(&self.quota, Call::Check(CheckCall::Delete)).await;
        match self
            .client
            .delete_health_check()
            .health_check_id(id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match classify("DeleteHealthCheck", &target, e) {
                // Gone already: what was wanted.
                e if e.kind == ErrorKind::NotFound => Ok(()),
                e => {
                    self.note(&e, Call::Check(CheckCall::Delete));
                    Err(e)
                }
            },
        }
    }

    async fn health_check_status(&self, id: &str) -> Result<String, AwsError> {
        let target = format!("route53 health check {id}");
        quota::route53::take(&self.quota, Call::Check(CheckCall::Status)).await;
        let out = self
            .client
            .get_health_check_status()
            .health_check_id(id)
            .customize()
            .config_override(reads())
            .send()
            .await
            .map_err(|e| classify("GetHealthCheckStatus", &target, e))
            .inspect_err(|e| self.note(e, Call::Check(CheckCall::Status)))?;
        let reports: Vec<String> = out
            .health_check_observations()
            .iter()
            .filter_map(|o| o.status_report().and_then(|r| r.status()))
            .map(str::to_string)
            .collect();
        Ok(crate::health_check::summarise(&reports))
    }

    async fn change_state(&self, zone: &str, id: &str) -> Result<ChangeState, AwsError> {
        let target = format!("route53/{zone}");
        quota::route53::take(&self.quota, Call::Get).await;
        let out = self
            .client
            .get_change()
            .id(id)
            .customize()
            .config_override(reads())
            .send()
            .await
            .map_err(|e| classify("GetChange", &target, e))
            .inspect_err(|e| self.note(e, Call::Get))?;
        Ok(match out.change_info().map(|info| info.status()) {
            Some(ChangeStatus::Insync) => ChangeState::InSync,
            _ => ChangeState::Pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_building() {
        let change = RecordChange {
            action: Action::Delete,
            set: RecordSet {
                name: "www.example.com".into(),
                rtype: RecordType::Aaaa,
                ttl: 30,
                values: vec!["2001:db8::2".into(), "2001:db8::1".into()],
                set_id: None,
                health_check: None,
            },
            added: vec![],
            removed: vec![],
        };
        let sdk = to_sdk(&change, "t").unwrap();
        assert_eq!(sdk.action(), &ChangeAction::Delete);
        let set = sdk.resource_record_set().unwrap();
        assert_eq!(set.name(), "www.example.com.");
        assert_eq!(set.r#type(), &RrType::Aaaa);
        assert_eq!(set.ttl(), Some(30));
        let values: Vec<&str> = set.resource_records().iter().map(|r| r.value()).collect();
        assert_eq!(
            values,
            ["2001:db8::2", "2001:db8::1"],
            "a DELETE keeps Route53's order"
        );
        for (action, want) in [
            (Action::Create, ChangeAction::Create),
            (Action::Upsert, ChangeAction::Upsert),
        ] {
            let c = RecordChange {
                action,
                ..change.clone()
            };
            assert_eq!(to_sdk(&c, "t").unwrap().action(), &want);
        }
    }

    #[test]
    fn names_from_route53_are_normalised() {
        assert_eq!(normalise_name("WWW.Example.com."), "www.example.com");
        assert_eq!(normalise_name("\\052.example.com."), "*.example.com");
    }
}
