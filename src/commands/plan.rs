//! `lbmanager plan`: read etcd and AWS once and say, per load balancer, what `run` would change.
//!
//! The comparison is the same pure planning `run` uses ([`crate::plan`]); this module only reads,
//! collects and renders. Rendering is pure (tested without AWS).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::net::IpAddr;
use std::process::ExitCode;

use serde::Serialize;
use slog::error;

use crate::aws::roles::Accounts;
use crate::aws::{self, AwsError};
use crate::cli::{PlanArgs, PlanOutput};
use crate::desired::DesiredState;
use crate::fence::Fence;
use crate::key::{LbId, Member};
use crate::plan::{spell, Policy};
use crate::sync::{ips_of, read_and_plan_elb, read_and_plan_fqdn};

/// One load balancer's plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LbPlan {
    pub load_balancer: String,
    pub desired: Vec<String>,
    pub actual: Vec<String>,
    /// Human-readable changes: `register i-1,i-2`, `deregister …`, `UPSERT A 192.0.2.1,…`.
    pub changes: Vec<String>,
    /// Why AWS could not be read, if it could not.
    pub error: Option<String>,
    /// Members the running lbmanager found AWS refusing to register (a terminated instance whose
    /// key stayed), as `member: reason`; they appear in `changes` too, as `run` keeps trying them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<String>,
    /// `--ownership shared`: members in AWS that lbmanager did not add, which `run` leaves alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<String>,
}

/// How `run` would plan (its flags that matter to a plan).
pub struct PlanHow {
    /// `--route53-ttl`.
    pub ttl: i64,
    pub policy: Policy,
    /// `--route53-health-check`.
    pub health_checks: Vec<crate::health_check::HealthRule>,
    /// The installation: whose health checks are lbmanager's (see
    /// [`crate::etcd::installation`]).
    pub installation: String,
}

/// Plans every load balancer that has keys (and those recorded as managed, which `run` would
/// empty). `rejected`: the refusals the running lbmanager recorded, by load balancer. `owned`:
/// with `--ownership shared`, the members lbmanager added, by load balancer (only those are
/// removed).
pub async fn plan_all(
    desired: &DesiredState,
    managed: &BTreeSet<LbId>,
    rejected: &BTreeMap<LbId, crate::status::Rejections>,
    aws: &Accounts,
    how: &PlanHow,
    owned: Option<&HashMap<LbId, BTreeSet<String>>>,
) -> Vec<LbPlan> {
    let policy = how.policy;
    let none = BTreeSet::new();
    let mut lbs: BTreeSet<LbId> = desired.load_balancers().cloned().collect();
    lbs.extend(managed.iter().cloned());
    let mut plans = Vec::new();
    for lb in lbs {
        let members = desired.resolve(&lb).members;
        let mut plan = LbPlan {
            load_balancer: lb.to_string(),
            desired: members.iter().map(Member::to_string).collect(),
            ..LbPlan::default()
        };
        if let Some(refused) = rejected.get(&lb) {
            plan.rejected = refused
                .iter()
                .map(|(member, reason)| format!("{member}: {reason}"))
                .collect();
            if refused.more > 0 {
                plan.rejected.push(format!("{} more", refused.more));
            }
        }
        let result: Result<(), AwsError> = async {
            match &lb {
                LbId::Elb { region, name } | LbId::TargetGroup { region, name } => {
                    let api = if matches!(lb, LbId::Elb { .. }) {
                        aws.elb(region, name)
                    } else {
                        aws.elbv2(region, name)
                    };
                    let mine = owned.map(|o| o.get(&lb).unwrap_or(&none));
                    let (actual, changes, foreign) =
                        read_and_plan_elb(&*api, region, name, &members, policy, mine).await?;
                    plan.actual = actual.members.iter().map(|m| m.to_string()).collect();
                    plan.foreign = foreign.iter().map(|t| t.to_string()).collect();
                    if !changes.register.is_empty() {
                        plan.changes
                            .push(format!("register {}", spell(&changes.register)));
                    }
                    if !changes.deregister.is_empty() {
                        plan.changes
                            .push(format!("deregister {}", spell(&changes.deregister)));
                    }
                }
                LbId::Route53 { zone, fqdn } => {
                    let ips = ips_of(&members);
                    let ours: Option<BTreeSet<IpAddr>> = owned.map(|o| {
                        let mine = o.get(&lb).unwrap_or(&none);
                        mine.iter().filter_map(|m| m.parse().ok()).collect()
                    });
                    let want = crate::sync::zone::FqdnWant {
                        lb: lb.clone(),
                        fqdn: fqdn.clone(),
                        ips: ips.clone(),
                        cause: crate::sync::Cause::Startup,
                        owned: ours.clone(),
                        check: crate::health_check::rule_for(&how.health_checks, zone, fqdn)
                            .cloned(),
                        dns_busy: false,
                    };
                    let references =
                        crate::health_check::Reference::zone_prefix(&how.installation, zone);
                    let fqdn_plan = read_and_plan_fqdn(
                        &*aws.route53(zone),
                        zone,
                        &want,
                        how.ttl,
                        how.policy,
                        &references,
                    )
                    .await?;
                    let (current, changes) = (fqdn_plan.current, fqdn_plan.changes);
                    for (ip, spec) in fqdn_plan.create_checks {
                        plan.changes
                            .push(format!("create health check {spec} of {ip}"));
                    }
                    plan.actual = current.iter().flat_map(|s| s.values.clone()).collect();
                    if let Some(ours) = &ours {
                        plan.foreign = plan
                            .actual
                            .iter()
                            .filter(|v| v.parse().is_ok_and(|ip: IpAddr| !ours.contains(&ip)))
                            .filter(|v| v.parse().is_ok_and(|ip: IpAddr| !ips.contains(&ip)))
                            .cloned()
                            .collect();
                    }
                    for c in changes {
                        let multivalue = match (&c.set.set_id, &c.set.health_check) {
                            (Some(_), Some(id)) => format!(" (multivalue, health check {id})"),
                            (Some(_), None) => " (multivalue)".to_string(),
                            _ => String::new(),
                        };
                        plan.changes.push(format!(
                            "{} {} {}{multivalue}",
                            c.action.as_str(),
                            c.set.rtype,
                            c.set.values.join(",")
                        ));
                    }
                    for check in fqdn_plan.delete_checks {
                        plan.changes.push(format!(
                            "delete health check {} ({} of {})",
                            check.id, check.spec, check.ip
                        ));
                    }
                }
            }
            Ok(())
        }
        .await;
        plan.error = result.err().map(|e| e.to_string());
        plans.push(plan);
    }
    plans
}

/// The exit code of `plan`: 1 if anything could not be read, 2 if anything would change, else 0.
pub fn exit_code(plans: &[LbPlan]) -> u8 {
    if plans.iter().any(|p| p.error.is_some()) {
        1
    } else if plans.iter().any(|p| !p.changes.is_empty()) {
        2
    } else {
        0
    }
}

/// A table for a terminal.
pub fn render_table(plans: &[LbPlan]) -> String {
    let mut out = String::new();
    let width = plans
        .iter()
        .map(|p| p.load_balancer.len())
        .max()
        .unwrap_or(0)
        .max("LOAD BALANCER".len());
    let _ = writeln!(
        out,
        "{:width$}  {:>7}  {:>6}  CHANGES",
        "LOAD BALANCER", "DESIRED", "ACTUAL"
    );
    for p in plans {
        let changes = match (&p.error, p.changes.is_empty()) {
            (Some(e), _) => format!("error: {e}"),
            (None, true) => "in step".to_string(),
            (None, false) => p.changes.join("; "),
        };
        let changes = if p.rejected.is_empty() {
            changes
        } else {
            format!("{changes} (rejected by AWS: {})", p.rejected.join("; "))
        };
        let changes = if p.foreign.is_empty() {
            changes
        } else {
            format!(
                "{changes} (not lbmanager's, left alone: {})",
                p.foreign.join(",")
            )
        };
        let line = format!(
            "{:width$}  {:>7}  {:>6}  {changes}",
            p.load_balancer,
            p.desired.len(),
            p.actual.len()
        );
        let _ = writeln!(out, "{}", crate::escape::escape(&line));
    }
    let drift = plans.iter().filter(|p| !p.changes.is_empty()).count();
    let _ = writeln!(
        out,
        "\n{} load balancer(s), {drift} with changes to make, {} unreadable",
        plans.len(),
        plans.iter().filter(|p| p.error.is_some()).count()
    );
    out
}

/// `lbmanager plan`: read etcd and AWS once, print what `run` would change.
pub async fn plan(args: PlanArgs) -> ExitCode {
    let log = args.log.logger();
    let etcd_opts = match super::reach::checked(&log, &args.etcd, &args.route53, &args.sync) {
        Ok(opts) => opts,
        Err(code) => return code,
    };
    let Some((_, snapshot, records)) = super::reach::initial_read(
        &log,
        &etcd_opts,
        &crate::layout::Layout::new(&args.etcd.prefix),
        &args.sync.filters(),
        args.etcd.etcd_connect_timeout,
        false,
    )
    .await
    else {
        return ExitCode::FAILURE;
    };
    let loaded = snapshot.loaded;
    for (key, e) in &loaded.ignored {
        crate::desired::log_ignored(&log, key, e);
    }
    if loaded.ignored_more > 0 {
        slog::warn!(log, "more keys count for nothing than are listed";
            "not_listed" => loaded.ignored_more);
    }
    let sdk = aws::load_sdk_config(&args.aws.client_options()).await;
    let recorded: std::collections::BTreeSet<_> = records
        .managed
        .into_iter()
        .filter(|lb| loaded.desired.allows(lb))
        .collect();
    let plans = plan_all(
        &loaded.desired,
        &recorded,
        &records.rejected,
        &super::reach::backends(
            &sdk,
            &args.aws.quotas(),
            &args.aws.assume_role,
            &Fence::open(),
            None,
            &log,
        )
        .await,
        &PlanHow {
            ttl: args.route53.route53_ttl,
            policy: args.sync.policy.into(),
            health_checks: args.route53.route53_health_check.clone(),
            installation: records.installation.clone().unwrap_or_default(),
        },
        (args.sync.ownership() == crate::ownership::Ownership::Shared).then_some(&records.owned),
    )
    .await;
    match args.output {
        PlanOutput::Table => print!("{}", render_table(&plans)),
        PlanOutput::Json => match serde_json::to_string_pretty(&plans) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                error!(log, "cannot render the plan as JSON"; "error" => %e);
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::from(exit_code(&plans))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(name: &str, changes: &[&str], error: Option<&str>) -> LbPlan {
        LbPlan {
            load_balancer: name.into(),
            desired: vec!["i-00000001".into()],
            actual: vec![],
            changes: changes.iter().map(|s| s.to_string()).collect(),
            error: error.map(str::to_string),
            rejected: vec![],
            foreign: vec![],
        }
    }

    /// `run` retires a load balancer recorded as managed whose keys are gone and that AWS no
    /// longer has: in step. `plan` must say the same, not fail.
    #[actix_rt::test]
    async fn a_recorded_load_balancer_gone_from_aws_without_keys_is_in_step() {
        use crate::aws::fake::{FakeElb, FakeRoute53};
        let lbs: BTreeSet<LbId> = [
            "elb/us-east-1/gone".parse::<LbId>().unwrap(),
            "route53/ZGONE/www.example.com".parse::<LbId>().unwrap(),
        ]
        .into();
        let desired = DesiredState::new("/lbManager");
        let elb = std::sync::Arc::new(FakeElb::default());
        let aws = Accounts::from(crate::aws::Backends {
            elb: elb.clone(),
            elbv2: elb,
            route53: std::sync::Arc::new(FakeRoute53::default()),
        });
        let plans = plan_all(
            &desired,
            &lbs,
            &BTreeMap::new(),
            &aws,
            &PlanHow {
                ttl: 60,
                policy: Policy::Sync,
                health_checks: vec![],
                installation: "00000000".into(),
            },
            None,
        )
        .await;
        assert_eq!(plans.len(), 2);
        assert!(plans.iter().all(|p| p.error.is_none()), "{plans:?}");
        assert_eq!(exit_code(&plans), 0);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&[]), 0);
        assert_eq!(exit_code(&[plan("a", &[], None)]), 0);
        assert_eq!(
            exit_code(&[plan("a", &[], None), plan("b", &["register i-1"], None)]),
            2
        );
        assert_eq!(
            exit_code(&[plan("a", &["x"], None), plan("b", &[], Some("boom"))]),
            1
        );
    }

    #[test]
    fn table_says_what_would_change() {
        let t = render_table(&[
            plan("elb/us-east-1/web", &["register i-00000001"], None),
            plan("route53/Z1/www.example.com", &[], None),
            plan("elb/us-east-1/ghost", &[], Some("LoadBalancerNotFound")),
        ]);
        assert!(t.starts_with("LOAD BALANCER"));
        assert!(t.contains("elb/us-east-1/web") && t.contains("register i-00000001"));
        assert!(t.contains("in step"));
        assert!(t.contains("error: LoadBalancerNotFound"));
        assert!(t.contains("3 load balancer(s), 1 with changes to make, 1 unreadable"));
        let mut bad = plan("elb/us-east-1/web", &["register i-00000002"], None);
        bad.rejected = vec!["i-00000002: InvalidInstance: not running".into()];
        let t = render_table(&[bad]);
        assert!(
            t.contains("register i-00000002 (rejected by AWS: i-00000002: InvalidInstance"),
            "{t}"
        );
    }
}
