//! `--assume-role SCOPE=ROLE_ARN`: load balancers and hosted zones in other accounts, reached
//! with STS AssumeRole credentials (aws-config's provider: cached, refreshed before they expire).
//!
//! Each role gets SDK clients of its own, so each assumed account gets its own quota buckets
//! (AWS throttles per account); [`Accounts`] hands each load balancer's and zone's actor the
//! clients of the first rule whose scope matches it, and the rest the default credentials'.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::{AccountQuotas, Backends, ElbApi, Quotas, Route53Api};

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

/// AWS as lbmanager reaches it: the default credentials' clients, and each `--assume-role`
/// rule's for the load balancers and zones its scope covers (the first rule that matches wins).
///
/// An actor has one load balancer or one zone, so one account: it is handed that account's
/// client when it is spawned ([`Accounts::elb`], [`Accounts::route53`]), and nothing routes
/// its calls afterwards.
#[derive(Clone)]
pub struct Accounts {
    default: Backends,
    /// In the order given: the first match wins.
    rules: Arc<Vec<(Scope, Backends)>>,
    /// How many accounts the roles reach (each with its own quota buckets).
    accounts: usize,
    /// Each account's quota buckets, named for the page: the default credentials' first.
    quotas: Arc<Vec<(String, AccountQuotas)>>,
}

impl From<Backends> for Accounts {
    /// One account: the default credentials' (no `--assume-role`).
    fn from(default: Backends) -> Self {
        Accounts {
            default,
            rules: Arc::default(),
            accounts: 0,
            quotas: Arc::default(),
        }
    }
}

/// The account id of a role ARN (`arn:aws:iam::ACCOUNT:role/NAME`).
fn account_of(role_arn: &str) -> &str {
    role_arn.split(':').nth(4).unwrap_or(role_arn)
}

impl Accounts {
    /// Builds the clients of each distinct role (AssumeRole through the default configuration's
    /// credentials; `metrics` counts their calls too). Roles into one account share its quota
    /// buckets (AWS throttles per account).
    pub async fn assume(
        base: &aws_config::SdkConfig,
        default: Backends,
        rules: &[RoleRule],
        quotas: &Quotas,
        fence: &crate::fence::Fence,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Accounts {
        let mut by_role: BTreeMap<(String, Option<String>), Backends> = BTreeMap::new();
        let mut accounts: BTreeMap<String, AccountQuotas> = BTreeMap::new();
        let mut routed = Vec::new();
        for rule in rules {
            let role = (rule.role_arn.clone(), rule.external_id.clone());
            if !by_role.contains_key(&role) {
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
        Accounts {
            default,
            rules: Arc::new(routed),
            accounts: accounts.len(),
            quotas: Arc::new(
                accounts
                    .into_iter()
                    .map(|(id, q)| (format!("account {id}"), q))
                    .collect(),
            ),
        }
    }

    /// The same, with the default credentials' quota buckets (`quotas`, named `name`) shown
    /// first by [`Accounts::quota_uses`].
    pub fn with_default_quotas(mut self, name: &str, quotas: AccountQuotas) -> Self {
        let mut all = vec![(name.to_string(), quotas)];
        all.extend(self.quotas.iter().cloned());
        self.quotas = Arc::new(all);
        self
    }

    /// Every account's quota buckets as they stand now (see [`AccountQuotas::uses`]).
    pub fn quota_uses(&self) -> Vec<super::QuotaUse> {
        self.quotas
            .iter()
            .flat_map(|(name, q)| q.uses(name))
            .collect()
    }

    /// How many accounts the `--assume-role` rules reach.
    pub fn accounts(&self) -> usize {
        self.accounts
    }

    fn backends(&self, covers: impl Fn(&Scope) -> bool) -> &Backends {
        self.rules
            .iter()
            .find(|(scope, _)| covers(scope))
            .map_or(&self.default, |(_, b)| b)
    }

    /// The client of Classic ELB `name` in `region`.
    pub fn elb(&self, region: &str, name: &str) -> Arc<dyn ElbApi> {
        let b = self.backends(|s| s.elb_matches(false, region, name));
        b.elb.clone()
    }

    /// The client of target group `name` in `region`.
    pub fn elbv2(&self, region: &str, name: &str) -> Arc<dyn ElbApi> {
        let b = self.backends(|s| s.elb_matches(true, region, name));
        b.elbv2.clone()
    }

    /// The client of hosted zone `zone` (its record sets and its health checks: a record set's
    /// check must be of the zone's account).
    pub fn route53(&self, zone: &str) -> Arc<dyn Route53Api> {
        self.backends(|s| s.zone_matches(zone)).route53.clone()
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

    /// Each load balancer gets the backends (the account, its quota) of the first matching
    /// rule, permit and all; the rest the default's.
    #[tokio::test]
    async fn each_load_balancer_gets_the_account_whose_rule_matches() {
        let home = Arc::new(FakeElb::with_lbs(&[("us-east-1", "web")]));
        let other = Arc::new(FakeElb::with_lbs(&[("us-east-1", "acctLB")]));
        let rule = parse_rule("elb/*/acctLB=arn:aws:iam::111111111111:role/x").unwrap();
        let accounts = Accounts {
            default: fakes(&home),
            rules: Arc::new(vec![(rule.scope, fakes(&other))]),
            accounts: 1,
            quotas: Arc::default(),
        };
        let t = crate::key::Target::instance("i-00000001");
        let api = accounts.elb("us-east-1", "acctLB");
        let permit = api.permit("us-east-1", "acctLB").await;
        api.register("us-east-1", "acctLB", std::slice::from_ref(&t), permit)
            .await
            .unwrap();
        accounts
            .elb("us-east-1", "web")
            .members("us-east-1", "web")
            .await
            .unwrap();
        assert_eq!(other.instances("us-east-1", "acctLB").unwrap().len(), 1);
        assert!(other.calls().iter().all(|c| c.contains("acctLB")));
        assert!(home.calls().iter().all(|c| c.contains("web")));
        assert_eq!(home.calls().len(), 1);
        // A target group of the same name is not an ELB: the default's.
        let tg = accounts.elbv2("us-east-1", "acctLB");
        assert!(tg.members("us-east-1", "acctLB").await.is_err());
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
        let accounts = Accounts::assume(
            &base,
            default,
            &rules,
            &Quotas::default(),
            &crate::fence::Fence::open(),
            None,
        )
        .await;
        assert_eq!(accounts.rules.len(), 3);
        assert_eq!(accounts.accounts, 2);
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
