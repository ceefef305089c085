//! The AWS side, behind traits: the core needs only these few operations, so it is tested with the
//! in-memory fakes of `fake` (compiled for tests only) and runs for real with the SDK clients of
//! [`elb`] (Classic ELB), [`elbv2`] (target groups, behind the same [`ElbApi`]) and [`route53`],
//! built once per account as [`Backends`]. Their calls are counted by an SDK interceptor
//! ([`count`]); [`roles`] picks the account of each load balancer and zone once, when its actor
//! is spawned.
//!
//! Every operation is a read or a whole change; none keeps state between calls, so an actor may
//! re-run a sync at any time (after an error, a restart or a resync) without care.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_route53::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use std::net::IpAddr;

use crate::fence::Fence;
use crate::health_check::{CheckSpec, HealthCheck};
use crate::key::Target;
use crate::plan::{RecordChange, RecordSet, Registered};

pub mod count;
pub mod elb;
pub mod elbv2;
#[cfg(test)]
pub mod fake;
pub mod loader;
pub mod quota;
pub mod regional;
pub mod roles;
pub mod route53;

/// The members of an ELB-like load balancer: a Classic ELB (members are instances, [`Target`]s
/// without a port) or an ELBv2 target group (members are targets with their port).
#[async_trait]
pub trait ElbApi: Send + Sync + 'static {
    /// What is registered with load balancer (or target group) `name` in `region`.
    async fn members(&self, region: &str, name: &str) -> Result<Registered, AwsError>;
    /// The health of the members of a load balancer whose [`ElbApi::members`] does not report it
    /// (a Classic ELB: DescribeInstanceHealth, one more Describe, made only while someone may be
    /// waiting on a member's health). Target groups report it with their members: nothing here.
    async fn health(
        &self,
        _region: &str,
        _name: &str,
    ) -> Result<std::collections::BTreeMap<Target, crate::plan::Health>, AwsError> {
        Ok(Default::default())
    }
    /// Waits until one more Register or Deregister call on `name` may go out in `region` within
    /// AWS's quotas (those of the account that owns it), and takes its share of them. A sync waits
    /// for its permit *before* it settles what to register, so that what arrived while it waited
    /// goes out in the same call.
    async fn permit(&self, region: &str, name: &str) -> Permit;
    /// Registers all of `members` in one call, paid for by `permit`.
    async fn register(
        &self,
        region: &str,
        name: &str,
        members: &[Target],
        permit: Permit,
    ) -> Result<(), AwsError>;
    /// Deregisters all of `members` in one call, paid for by `permit`.
    async fn deregister(
        &self,
        region: &str,
        name: &str,
        members: &[Target],
        permit: Permit,
    ) -> Result<(), AwsError>;
}

/// The quota taken for one Register or Deregister call (see [`ElbApi::permit`]): a call can only
/// be made with one, so no mutating call skips the pacing.
#[must_use = "a permit is quota already taken from AWS's buckets"]
#[derive(Debug)]
pub struct Permit(());

impl Permit {
    /// Only an [`ElbApi`] hands permits out (after taking the quota, where it paces calls).
    pub(crate) fn granted() -> Self {
        Permit(())
    }
}

/// The Route53 operations lbmanager needs.
#[async_trait]
pub trait Route53Api: Send + Sync + 'static {
    /// The simple A and AAAA record sets named `fqdn` in `zone`, and its multivalue answer sets
    /// of lbmanager's shape (one value, which is their `SetIdentifier`; see
    /// [`RecordSet::is_multivalue`]); other routing-policy and alias record sets are not
    /// lbmanager's and are left out. An error is never "no records".
    async fn record_sets(&self, zone: &str, fqdn: &str) -> Result<Vec<RecordSet>, AwsError>;
    /// Every simple A and AAAA record set of `zone`, in as few pages as Route53 allows (300 a
    /// page): cheaper than one read per FQDN when many FQDNs are due at once.
    async fn zone_record_sets(&self, zone: &str) -> Result<Vec<RecordSet>, AwsError>;
    /// Applies `changes` in one ChangeResourceRecordSets call (all or nothing). Route53 has
    /// accepted them: the answer is the change's id, which is `INSYNC` (every Route53 name server
    /// answers with it) only later (see [`Route53Api::change_state`]).
    async fn change(&self, zone: &str, changes: &[RecordChange]) -> Result<ChangeId, AwsError>;
    /// Whether the change `id` (made in `zone`) has reached every Route53 name server
    /// (GetChange).
    async fn change_state(&self, zone: &str, id: &str) -> Result<ChangeState, AwsError>;
    /// How many record sets `zone` holds, of every type and owner (GetHostedZone's
    /// `ResourceRecordSetCount`): what a read of the whole zone costs.
    async fn zone_size(&self, zone: &str) -> Result<u64, AwsError>;
    /// The health checks of the account whose `CallerReference` starts with `reference_prefix`
    /// (see [`crate::health_check::Reference`]): ListHealthChecks, every page. Health checks
    /// belong to an account, not to a zone: a record set's check must be of its zone's account,
    /// which is why a zone's actor is handed the client of its zone's account.
    async fn health_checks(&self, reference_prefix: &str) -> Result<Vec<HealthCheck>, AwsError>;
    /// Creates the check `spec` asks for of `ip` under `fqdn` (CreateHealthCheck), idempotent for
    /// one `reference`: Route53 answers a creation it already made with the same check. Its id.
    async fn create_health_check(
        &self,
        reference: &str,
        fqdn: &str,
        ip: IpAddr,
        spec: &CheckSpec,
    ) -> Result<String, AwsError>;
    /// Tags health check `id` (ChangeTagsForResource): for whoever reads the account; lbmanager
    /// itself goes by the reference.
    async fn tag_health_check(
        &self,
        id: &str,
        tags: &[(&'static str, String)],
    ) -> Result<(), AwsError>;
    /// Deletes health check `id` (one Route53 no longer knows is deleted already).
    async fn delete_health_check(&self, id: &str) -> Result<(), AwsError>;
    /// What Route53's health checkers last reported of check `id` (GetHealthCheckStatus), summed
    /// up as Route53 decides (see [`crate::health_check::summarise`]).
    async fn health_check_status(&self, id: &str) -> Result<String, AwsError>;
}

/// A Route53 change's id, as ChangeResourceRecordSets answers it (`/change/C2682N5HXP0BZ4`).
pub type ChangeId = String;

/// Where a Route53 change is (GetChange's `Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeState {
    /// Accepted, not yet on every Route53 name server: resolvers may not get it yet.
    Pending,
    /// On every Route53 name server.
    InSync,
}

/// The three AWS backends every part of lbmanager uses, built once: Classic ELB, ELBv2 target
/// groups (behind the same [`ElbApi`]) and Route53.
#[derive(Clone)]
pub struct Backends {
    pub elb: Arc<dyn ElbApi>,
    pub elbv2: Arc<dyn ElbApi>,
    pub route53: Arc<dyn Route53Api>,
}

/// How much of AWS's published quotas lbmanager allows itself (see [`quota`]).
#[derive(Clone, Copy, Debug)]
pub struct Quotas {
    /// The share of every published bucket (1: all of it; above 1 only for endpoints that do
    /// not throttle, such as moto).
    pub share: f64,
    /// Route53's change-throughput bucket, in changed records (AWS's figure, or the flags').
    pub route53_changes: quota::Bucket,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            share: 1.0,
            route53_changes: quota::route53::CHANGES,
        }
    }
}

/// One account's quota buckets (AWS throttles per account): ELB's and ELBv2's by region, and
/// Route53's.
#[derive(Clone)]
pub struct AccountQuotas {
    pub elb: regional::RegionQuotas,
    pub elbv2: regional::RegionQuotas,
    pub route53: Arc<quota::Quota>,
}

impl AccountQuotas {
    pub fn new(quotas: &Quotas) -> Self {
        AccountQuotas {
            elb: Default::default(),
            elbv2: Default::default(),
            route53: Arc::new(quota::route53::quota(quotas.share, quotas.route53_changes)),
        }
    }

    /// Each scope's buckets as they stand now: Route53's, then Classic ELB's and ELBv2's in each
    /// region called so far; `account` names whose they are.
    pub fn uses(&self, account: &str) -> Vec<QuotaUse> {
        let mut out = vec![QuotaUse {
            scope: format!("Route53 · {account}"),
            buckets: self.route53.uses(&quota::route53::NAMES),
        }];
        for (api, regions) in [("Classic ELB", &self.elb), ("ELBv2", &self.elbv2)] {
            let regions = regions.lock().unwrap_or_else(|e| e.into_inner());
            let mut sorted: Vec<_> = regions.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            out.extend(sorted.into_iter().map(|(region, q)| QuotaUse {
                scope: format!("{api} {region} · {account}"),
                buckets: q.uses(&quota::elb::NAMES),
            }));
        }
        out
    }
}

/// One throttling scope's buckets as they stand (the status page shows them).
#[derive(Clone, Debug)]
pub struct QuotaUse {
    pub scope: String,
    pub buckets: Vec<quota::BucketUse>,
}

impl Backends {
    /// The SDK clients of credentials of the account whose buckets are `account`, each call
    /// counted in `metrics` when there are metrics (see [`count`]). Every change passes `fence`
    /// (see [`crate::fence`]).
    pub fn sdk_in(
        sdk: &aws_config::SdkConfig,
        account: &AccountQuotas,
        quotas: &Quotas,
        fence: &Fence,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Self {
        let count = |service| {
            metrics
                .clone()
                .map(|metrics| count::CountCalls { metrics, service })
        };
        let pulse = loader::Pulse::process();
        Backends {
            elb: Arc::new(elb::SdkElb::new(
                sdk.clone(),
                quotas.share,
                account.elb.clone(),
                fence.clone(),
                count("elb"),
                pulse.clone(),
            )),
            elbv2: Arc::new(elbv2::SdkElbV2::new(
                sdk.clone(),
                quotas.share,
                account.elbv2.clone(),
                fence.clone(),
                count("elbv2"),
                pulse,
            )),
            route53: Arc::new(route53::SdkRoute53::new(
                sdk,
                account.route53.clone(),
                fence.clone(),
                count("route53"),
            )),
        }
    }
}

/// How an AWS call failed, which decides what happens next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Rate exceeded: retry with backoff.
    Throttled,
    /// 5xx, timeout, dropped connection: retry with backoff.
    Transient,
    /// The load balancer or hosted zone does not exist: retrying soon won't help.
    NotFound,
    /// The request was refused (invalid change batch, access denied, …): retrying soon won't help.
    Rejected,
    /// A Register call refused because of some of its members (a terminated or unknown instance):
    /// AWS registers none of them then, so the caller finds the bad ones and registers the rest.
    InvalidMember,
}

/// An AWS call that failed: which call, on what, how, and the SDK's own account of the cause.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{operation} on {target} failed ({kind:?}): {message}")]
pub struct AwsError {
    pub kind: ErrorKind,
    pub operation: &'static str,
    pub target: String,
    pub message: String,
}

impl AwsError {
    /// AWS does not know `target` (a load balancer, a zone, a change, a check).
    pub fn not_found(
        operation: &'static str,
        target: impl fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        AwsError::new(ErrorKind::NotFound, operation, target, message)
    }

    pub fn new(
        kind: ErrorKind,
        operation: &'static str,
        target: impl fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        AwsError {
            kind,
            operation,
            target: target.to_string(),
            message: message.into(),
        }
    }

    /// Whether an early retry (with backoff) can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Throttled | ErrorKind::Transient)
    }
}

impl ErrorKind {
    /// The kind of an error AWS answered with `code` (empty when it gave none) and HTTP
    /// `status`. A 5xx without a code (moto answers some errors with an HTML page) is transient;
    /// a 4xx without a known code is a rejection.
    pub fn of(code: &str, status: u16) -> ErrorKind {
        if THROTTLE_CODES.contains(&code) || status == 429 {
            ErrorKind::Throttled
        } else if INVALID_MEMBER_CODES.contains(&code) {
            ErrorKind::InvalidMember
        } else if NOT_FOUND_CODES.contains(&code) {
            ErrorKind::NotFound
        } else if status >= 500 {
            ErrorKind::Transient
        } else {
            ErrorKind::Rejected
        }
    }

    /// Its name in metrics (`lbmanager_aws_calls_total`'s `result`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::Transient => "transient",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Rejected => "rejected",
            ErrorKind::InvalidMember => "invalid_member",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<Target> {
        list.iter()
            .map(|s| crate::key::parse_target(s).unwrap())
            .collect()
    }

    #[test]
    fn members_named_in_aws_messages() {
        let tried = strings(&["i-00000001", "i-00000010", "i-00000002"]);
        assert_eq!(
            members_named_in(
                "HTTP 400, InvalidInstance: EC2 instance i-00000010 is not in running state.",
                &tried
            ),
            strings(&["i-00000010"])
        );
        let targets = strings(&[
            "i-00000001:80",
            "i-00000002:80",
            "10.0.0.5:8080",
            "[2001:db8::1]:443",
        ]);
        assert_eq!(
            members_named_in(
                "HTTP 400, InvalidTarget: The following targets are not in a running state and \
                 cannot be registered: 'i-00000002', '2001:db8::1'",
                &targets
            ),
            strings(&["i-00000002:80", "[2001:db8::1]:443"])
        );
        assert!(members_named_in("HTTP 400, InvalidInstance: bad request", &tried).is_empty());
    }
}

/// Error codes that mean "slow down" on ELB and Route53.
const THROTTLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "PriorRequestNotComplete",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "SlowDown",
];

/// Error codes of a Register call that refuses some of its members (and so registers none).
const INVALID_MEMBER_CODES: &[&str] = &["InvalidInstance", "InvalidTarget"];

const NOT_FOUND_CODES: &[&str] = &[
    "LoadBalancerNotFound",
    "AccessPointNotFound",
    "NoSuchHostedZone",
    "TargetGroupNotFound",
    "NoSuchChange",
    "NoSuchHealthCheck",
];

/// Sorts an SDK error into an [`AwsError`] (see [`ErrorKind::of`]).
pub fn classify<E>(operation: &'static str, target: impl fmt::Display, err: SdkError<E>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, message) = match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            let status = service.raw().status().as_u16();
            let kind = ErrorKind::of(code, status);
            // The code and message are what an operator needs; the SDK's full context would add
            // the whole raw response.
            let text = service.err().message().unwrap_or("no message");
            let code = if code.is_empty() {
                "no error code"
            } else {
                code
            };
            (kind, format!("HTTP {status}, {code}: {text}"))
        }
        SdkError::ConstructionFailure(_) => {
            (ErrorKind::Rejected, DisplayErrorContext(&err).to_string())
        }
        // Timeouts, connection failures, unparseable responses: the network or the server.
        _ => (ErrorKind::Transient, DisplayErrorContext(&err).to_string()),
    };
    AwsError::new(kind, operation, target, message)
}

/// The members of `tried` that an AWS error message names (`EC2 instance i-… is not in running
/// state`, `… cannot be registered: 'i-1', 'i-2'`). A member is named when its id (a target's id
/// without the port) is a whole word of the message.
pub fn members_named_in(message: &str, tried: &[Target]) -> Vec<Target> {
    let words: std::collections::HashSet<&str> = message
        .split(|c: char| !(c.is_ascii_alphanumeric() || "-.:".contains(c)))
        .map(|w| w.trim_end_matches(['.', ':', ',']))
        .filter(|w| !w.is_empty())
        .collect();
    tried
        .iter()
        .filter(|m| words.contains(m.id_string().as_str()))
        .cloned()
        .collect()
}

/// Reads are safe to resend: the SDK retries them (3 attempts, its standard backoff) before an
/// actor sees an error. Changes are never resent blindly (see [`load_sdk_config`]).
pub fn read_retries() -> aws_config::retry::RetryConfig {
    aws_config::retry::RetryConfig::standard().with_max_attempts(3)
}

/// Options for the real SDK clients.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// A custom endpoint for both services (moto, LocalStack, a VPC endpoint).
    pub endpoint_url: Option<String>,
    /// The longest one call may take, retries included; the SDK has no default.
    pub timeout: Duration,
}

/// Loads the shared SDK configuration: the standard credential chain (environment, profile, web
/// identity, instance role), plus the original lbManager's `AWS_ACCESS_KEY`/`AWS_SECRET_KEY` names
/// when the standard ones are not set.
pub async fn load_sdk_config(opts: &ClientOptions) -> aws_config::SdkConfig {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .app_name(aws_config::AppName::new("lbmanager").expect("a valid app name"))
        // No blind resends: a Register or CREATE whose answer was lost may have been applied, and
        // resending it is not safe everywhere (moto stores the instance twice, a second CREATE
        // fails). The actors retry instead, with backoff, from a fresh read and a fresh plan.
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(opts.timeout / 2)
                .operation_timeout(opts.timeout)
                .build(),
        );
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        // Every call names its region (ELB) or is global (Route53); this only keeps the loader
        // from looking for a region in the instance metadata.
        loader = loader.region(aws_config::Region::new("us-east-1"));
    }
    if let Some(url) = &opts.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        if let (Ok(id), Ok(secret)) = (
            std::env::var("AWS_ACCESS_KEY"),
            std::env::var("AWS_SECRET_KEY"),
        ) {
            loader = loader.credentials_provider(aws_sdk_route53::config::Credentials::new(
                id,
                secret,
                None,
                None,
                "AWS_ACCESS_KEY",
            ));
        }
    }
    loader.load().await
}
