//! `--assume-role SCOPE=ROLE_ARN`: load balancers and hosted zones in other accounts, reached
//! with STS AssumeRole credentials (aws-config's provider: cached, refreshed before they expire).
//!
//! Each role gets SDK clients of its own, so each assumed account gets its own quota buckets
//! (AWS throttles per account); [`Routed`] sends each call to the clients of the first rule whose
//! scope matches the load balancer or zone, and the rest to the default credentials' clients.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::{
    AccountQuotas, AwsError, Backends, ChangeId, ChangeState, ElbApi, Permit, Quotas, Route53Api,
};
use crate::health_check::{CheckSpec, HealthCheck};
use crate::key::Target;
use crate::plan::{Health, RecordChange, RecordSet, Registered};
use std::net::IpAddr;

/// What a rule covers: `elb/REGION/NAME`, `elbv2/REGION/NAME` or `route53/ZONE_ID`, where any
/// part may be `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Elb { region: String, name: String },
    ElbV2 { region: String, name: String },
    Route53 { zone: String },
}

fn part_matches(pattern: &str, value: &str) -> bool {
    pattern == "*" || pattern == value
}

impl Scope {
    fn elb_matches(&self, v2: bool, region: &str, name: &str) -> bool {
        match self {
            Scope::Elb { region: r, name: n } if !v2 => {
                part_matches(r, region) && part_matches(n, name)
            }
            Scope::ElbV2 { region: r, name: n } if v2 => {
                part_matches(r, region) && part_matches(n, name)
            }
            _ => false,
        }
    }

    fn zone_matches(&self, zone: &str) -> bool {
        matches!(self, Scope::Route53 { zone: z } if part_matches(z, zone))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Elb { region, name } => write!(f, "elb/{region}/{name}"),
            Scope::ElbV2 { region, name } => write!(f, "elbv2/{region}/{name}"),
            Scope::Route53 { zone } => write!(f, "route53/{zone}"),
        }
    }
}

/// One `--assume-role` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRule {
    pub scope: Scope,
    pub role_arn: String,
    pub external_id: Option<String>,
}

/// Parses `SCOPE=ROLE_ARN` or `SCOPE=ROLE_ARN#EXTERNAL_ID` (`#` is in no role ARN).
pub fn parse_rule(s: &str) -> Result<RoleRule, String> {
    if s.trim().is_empty() {
        return Err("an empty rule (separate rules with one space)".into());
    }
    let (scope, role) = s.split_once('=').ok_or(
        "expected SCOPE=ROLE_ARN, like elb/us-east-1/web=arn:aws:iam::111111111111:role/lbmanager",
    )?;
    let parts: Vec<&str> = scope.split('/').collect();
    let ok = |p: &&str| !p.is_empty() && !p.contains('*') || *p == "*";
    if !parts.iter().all(ok) {
        return Err(format!(
            "bad scope {scope:?}: `*` stands for a whole part, and no part is empty"
        ));
    }
    let scope = match parts[..] {
        ["elb", region, name] => Scope::Elb {
            region: region.into(),
            name: name.into(),
        },
        ["elbv2", region, name] => Scope::ElbV2 {
            region: region.into(),
            name: name.into(),
        },
        ["route53", zone] => Scope::Route53 { zone: zone.into() },
        _ => {
            return Err(format!(
            "bad scope {scope:?}: expected elb/REGION/NAME, elbv2/REGION/NAME or route53/ZONE_ID"
        ))
        }
    };
    // Parts as the key grammar has them: a typo would match nothing, silently.
    let check = |part: &String, valid: fn(&str) -> Result<String, crate::key::KeyError>| {
        if part == "*" {
            return Ok(());
        }
        valid(part)
            .map(|_| ())
            .map_err(|e| format!("bad scope: {e}"))
    };
    match &scope {
        Scope::Elb { region, name } | Scope::ElbV2 { region, name } => {
            check(region, crate::key::region_of)?;
            check(name, crate::key::elb_name)?;
        }
        Scope::Route53 { zone } => check(zone, crate::key::hosted_zone)?,
    }
    let (role_arn, external_id) = match role.split_once('#') {
        Some((arn, id)) if !id.is_empty() => (arn, Some(id.to_string())),
        Some(_) => return Err("empty external id after #".into()),
        None => (role, None),
    };
    if !role_arn.starts_with("arn:") || !role_arn.contains(":role/") {
        return Err(format!(
            "{role_arn:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
        ));
    }
    Ok(RoleRule {
        scope,
        role_arn: role_arn.to_string(),
        external_id,
    })
}

/// The backends to use: the default credentials', and one set per role for the scopes it covers.
pub struct Routed {
    pub default: Backends,
    /// In the order given: the first match wins.
    pub rules: Vec<(Scope, Backends)>,
    /// How many accounts the roles reach (each with its own buckets).
    pub accounts: usize,
}

/// The account id of a role ARN (`arn:aws:iam::ACCOUNT:role/NAME`).
fn account_of(role_arn: &str) -> &str {
    role_arn.split(':').nth(4).unwrap_or(role_arn)
}

impl Routed {
    /// Builds the clients of each distinct role (AssumeRole through the default configuration's
    /// credentials; `metrics` counts their calls too).
    pub async fn assume(
        base: &aws_config::SdkConfig,
        default: Backends,
        rules: &[RoleRule],
        quotas: &Quotas,
        fence: &crate::fence::Fence,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Routed {
        let mut by_role: BTreeMap<(String, Option<String>), Backends> = BTreeMap::new();
        let mut accounts: BTreeMap<String, AccountQuotas> = BTreeMap::new();
        let mut routed = Vec::new();
        for rule in rules {
            let role = (rule.role_arn.clone(), rule.external_id.clone());
            if !by_role.contains_key(&role) {
                // Roles into one account share its buckets.
                let account = accounts
                    .entry(account_of(&rule.role_arn).to_string())
                    .or_insert_with(|| AccountQuotas::new(quotas))
                    .clone();
                let mut provider = aws_config::sts::AssumeRoleProvider::builder(&rule.role_arn)
                    .session_name("lbmanager")
                    .configure(base);
                if let Some(id) = &rule.external_id {
                    provider = provider.external_id(id);
                }
                let provider = provider.build().await;
                let config = base
                    .to_builder()
                    .credentials_provider(aws_sdk_route53::config::SharedCredentialsProvider::new(
                        provider,
                    ))
                    .build();
                by_role.insert(
                    role.clone(),
                    Backends::sdk_in(&config, &account, quotas, fence, metrics.clone()),
                );
            }
            routed.push((rule.scope.clone(), by_role[&role].clone()));
        }
        Routed {
            default,
            rules: routed,
            accounts: accounts.len(),
        }
    }

    /// The backends as lbmanager uses them: calls routed by scope.
    pub fn backends(self) -> Backends {
        let this = Arc::new(self);
        Backends {
            elb: Arc::new(RoutedElb {
                routes: this.clone(),
                v2: false,
            }),
            elbv2: Arc::new(RoutedElb {
                routes: this.clone(),
                v2: true,
            }),
            route53: Arc::new(RoutedRoute53 { routes: this }),
        }
    }

    fn elb(&self, v2: bool, region: &str, name: &str) -> &Arc<dyn ElbApi> {
        let backends = self
            .rules
            .iter()
            .find(|(scope, _)| scope.elb_matches(v2, region, name))
            .map_or(&self.default, |(_, b)| b);
        if v2 {
            &backends.elbv2
        } else {
            &backends.elb
        }
    }

    fn route53(&self, zone: &str) -> &Arc<dyn Route53Api> {
        &self
            .rules
            .iter()
            .find(|(scope, _)| scope.zone_matches(zone))
            .map_or(&self.default, |(_, b)| b)
            .route53
    }
}

struct RoutedElb {
    routes: Arc<Routed>,
    v2: bool,
}

#[async_trait]
impl ElbApi for RoutedElb {
    async fn members(&self, region: &str, name: &str) -> Result<Registered, AwsError> {
        self.routes
            .elb(self.v2, region, name)
            .members(region, name)
            .await
    }

    async fn health(&self, region: &str, name: &str) -> Result<BTreeMap<Target, Health>, AwsError> {
        self.routes
            .elb(self.v2, region, name)
            .health(region, name)
            .await
    }

    async fn permit(&self, region: &str, name: &str) -> Permit {
        self.routes
            .elb(self.v2, region, name)
            .permit(region, name)
            .await
    }

    async fn register(
        &self,
        region: &str,
        name: &str,
        members: &[Target],
        permit: Permit,
    ) -> Result<(), AwsError> {
        let api = self.routes.elb(self.v2, region, name);
        api.register(region, name, members, permit).await
    }

    async fn deregister(
        &self,
        region: &str,
        name: &str,
        members: &[Target],
        permit: Permit,
    ) -> Result<(), AwsError> {
        let api = self.routes.elb(self.v2, region, name);
        api.deregister(region, name, members, permit).await
    }
}

struct RoutedRoute53 {
    routes: Arc<Routed>,
}

#[async_trait]
impl Route53Api for RoutedRoute53 {
    async fn record_sets(&self, zone: &str, fqdn: &str) -> Result<Vec<RecordSet>, AwsError> {
        self.routes.route53(zone).record_sets(zone, fqdn).await
    }

    async fn zone_record_sets(&self, zone: &str) -> Result<Vec<RecordSet>, AwsError> {
        self.routes.route53(zone).zone_record_sets(zone).await
    }

    async fn change(&self, zone: &str, changes: &[RecordChange]) -> Result<ChangeId, AwsError> {
        self.routes.route53(zone).change(zone, changes).await
    }

    async fn change_state(&self, zone: &str, id: &str) -> Result<ChangeState, AwsError> {
        self.routes.route53(zone).change_state(zone, id).await
    }

    async fn zone_size(&self, zone: &str) -> Result<u64, AwsError> {
        self.routes.route53(zone).zone_size(zone).await
    }

    // A record set's health check must be the zone's account's: they go where the zone goes.
    async fn health_checks(&self, zone: &str, prefix: &str) -> Result<Vec<HealthCheck>, AwsError> {
        self.routes.route53(zone).health_checks(zone, prefix).await
    }

    async fn create_health_check(
        &self,
        zone: &str,
        reference: &str,
        fqdn: &str,
        ip: IpAddr,
        spec: &CheckSpec,
    ) -> Result<String, AwsError> {
        let api = self.routes.route53(zone);
        api.create_health_check(zone, reference, fqdn, ip, spec)
            .await
    }

    async fn delete_health_check(&self, zone: &str, id: &str) -> Result<(), AwsError> {
        self.routes
            .route53(zone)
            .delete_health_check(zone, id)
            .await
    }

    async fn health_check_status(&self, zone: &str, id: &str) -> Result<String, AwsError> {
        self.routes
            .route53(zone)
            .health_check_status(zone, id)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::fake::{FakeElb, FakeRoute53};

    fn fakes(elb: &Arc<FakeElb>) -> Backends {
        Backends {
            elb: elb.clone(),
            elbv2: elb.clone(),
            route53: Arc::new(FakeRoute53::default()),
        }
    }

    /// Each call goes to the backends (the account, its quota) of the first matching rule,
    /// permit and all; the rest to the default's.
    #[tokio::test]
    async fn calls_go_to_the_account_whose_rule_matches() {
        let home = Arc::new(FakeElb::with_lbs(&[("us-east-1", "web")]));
        let other = Arc::new(FakeElb::with_lbs(&[("us-east-1", "acctLB")]));
        let rule = parse_rule("elb/*/acctLB=arn:aws:iam::111111111111:role/x").unwrap();
        let routed = Routed {
            default: fakes(&home),
            rules: vec![(rule.scope, fakes(&other))],
            accounts: 1,
        }
        .backends();
        let t = crate::key::Target::instance("i-00000001");
        let permit = routed.elb.permit("us-east-1", "acctLB").await;
        routed
            .elb
            .register("us-east-1", "acctLB", std::slice::from_ref(&t), permit)
            .await
            .unwrap();
        routed.elb.members("us-east-1", "web").await.unwrap();
        assert_eq!(other.instances("us-east-1", "acctLB").unwrap().len(), 1);
        assert!(other.calls().iter().all(|c| c.contains("acctLB")));
        assert!(home.calls().iter().all(|c| c.contains("web")));
        assert_eq!(home.calls().len(), 1);
        // A target group of the same name is not an ELB: the default's.
        assert!(routed.elbv2.members("us-east-1", "acctLB").await.is_err());
        assert_eq!(home.calls().len(), 2);
    }

    /// Two roles into one account share its buckets; another account has its own.
    #[tokio::test]
    async fn roles_into_one_account_share_its_buckets() {
        let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_route53::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .load()
            .await;
        let rules: Vec<RoleRule> = [
            "elb/us-east-1/a=arn:aws:iam::111111111111:role/one",
            "elb/us-east-1/b=arn:aws:iam::111111111111:role/two",
            "route53/Z1=arn:aws:iam::222222222222:role/dns",
        ]
        .iter()
        .map(|r| parse_rule(r).unwrap())
        .collect();
        let default = Backends {
            elb: Arc::new(FakeElb::default()),
            elbv2: Arc::new(FakeElb::default()),
            route53: Arc::new(FakeRoute53::default()),
        };
        let routed = Routed::assume(
            &base,
            default,
            &rules,
            &Quotas::default(),
            &crate::fence::Fence::open(),
            None,
        )
        .await;
        assert_eq!(routed.rules.len(), 3);
        assert_eq!(routed.accounts, 2);
        assert_eq!(
            account_of("arn:aws:iam::111111111111:role/x"),
            "111111111111"
        );
    }

    #[test]
    fn rules_parse_and_scopes_match() {
        let r =
            parse_rule("elb/us-east-1/acctLB=arn:aws:iam::111111111111:role/lbmanager").unwrap();
        assert_eq!(
            r.scope,
            Scope::Elb {
                region: "us-east-1".into(),
                name: "acctLB".into()
            }
        );
        assert_eq!(r.role_arn, "arn:aws:iam::111111111111:role/lbmanager");
        assert_eq!(r.external_id, None);
        assert!(r.scope.elb_matches(false, "us-east-1", "acctLB"));
        assert!(!r.scope.elb_matches(true, "us-east-1", "acctLB"));
        assert!(!r.scope.elb_matches(false, "us-east-1", "other"));
        let r = parse_rule("elbv2/*/*=arn:aws:iam::2:role/x@y,z=w#ext-42").unwrap();
        assert_eq!(r.role_arn, "arn:aws:iam::2:role/x@y,z=w");
        assert_eq!(r.external_id.as_deref(), Some("ext-42"));
        assert!(r.scope.elb_matches(true, "eu-west-1", "any"));
        let r = parse_rule("route53/Z123=arn:aws:iam::3:role/dns").unwrap();
        assert!(r.scope.zone_matches("Z123") && !r.scope.zone_matches("Z999"));
        for bad in [
            "elb/us-east-1/web",
            "elb/us-east-1=arn:aws:iam::1:role/x",
            "elb/us-*/web=arn:aws:iam::1:role/x",
            "route53/Z1=not-an-arn",
            "route53/Z1=arn:aws:iam::1:role/x#",
            "s3/bucket=arn:aws:iam::1:role/x",
            "elb/us-east1/web=arn:aws:iam::1:role/x",
            "route53//hostedzone/Z1=arn:aws:iam::1:role/x",
            "",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
    }
}
