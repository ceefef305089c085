//! Command-line flags. Every flag has help text and an environment twin, so the same settings
//! work from a shell, a systemd EnvironmentFile and a container.

use std::time::Duration;

use crate::logging::{LogFormat, LogLevel};
use crate::ownership::Ownership;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "lbmanager",
    version,
    propagate_version = true,
    about = "Keeps AWS Classic ELBs, ALB/NLB target groups and Route53 A/AAAA record sets in step \
        with an etcd key tree",
    long_about = "Keeps AWS Classic ELBs, ALB/NLB target groups and Route53 A/AAAA record sets in \
        step with an etcd key tree.\n\n\
        Members are etcd keys:\n  \
        PREFIX/elb/REGION/LB_NAME/single|multiple/INSTANCE_ID\n  \
        PREFIX/elbv2/REGION/TARGET_GROUP/single|multiple/TARGET   (i-0abc[:PORT], IP[:PORT])\n  \
        PREFIX/route53/REGION/HOSTED_ZONE_ID/FQDN/single|multiple/IP\n\n\
        AWS credentials come from the standard chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
        AWS_PROFILE, web identity, instance role); the original lbManager's AWS_ACCESS_KEY and \
        AWS_SECRET_KEY are accepted too."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: read the key tree, sync every load balancer, then follow every change.
    Run(RunArgs),
    /// Show what `run` would change: read etcd and AWS once.
    ///
    /// Prints, per load balancer, the desired and actual members and the changes `run` would
    /// make. Exit 0: AWS matches etcd; 2: drift; 1: error.
    Plan(PlanArgs),
    /// Announce or withdraw a member, and wait until AWS has followed.
    ///
    /// For the host that runs the member. Needs etcd access only (no AWS credentials): it reads
    /// what the running lbmanager publishes.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Show, per load balancer, whether AWS is in step, as the running lbmanager published it.
    ///
    /// Desired members (from etcd now), members in AWS, in step or not, the last change, its
    /// error, members AWS rejects. Needs etcd access only. Exit 0: all in step; 2: some not (or
    /// never synced); 1: error, or no lbmanager has reported for more than three of its resync
    /// intervals.
    Status(StatusArgs),
    /// Say where one member key, or one load balancer, stands and why, in plain sentences.
    ///
    /// KEY is a member key (/lbManager/elb/us-east-1/webLB/multiple/i-0abc…) or a load balancer
    /// (elb/us-east-1/webLB, elbv2/REGION/NAME, route53/ZONE/FQDN): the key parsed (or why
    /// not), whether another key supersedes it, whether the filters given leave it out, whether
    /// AWS has it and since which revision, AWS's refusal and its reason, other tools' members,
    /// a Route53 change PENDING, its health. Needs etcd access only (what the running lbmanager
    /// published). Exit 0: the member is where its key says (a load balancer: in step); 1: not,
    /// or an error; 2: KEY is neither a member key nor a load balancer.
    Explain(ExplainArgs),
    /// Print the shell completion script for bash, zsh or fish.
    ///
    /// E.g. `lbmanager completions bash > /etc/bash_completion.d/lbmanager` (the Debian package
    /// installs all three).
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Write the man pages into DIR.
    ///
    /// lbmanager.1 and one per subcommand (lbmanager-member-add.1, …), generated from the same
    /// definitions as --help (the Debian package installs them).
    Manpages {
        /// Where to write them (created if missing).
        dir: std::path::PathBuf,
    },
}

/// The shells `lbmanager completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(shell: CompletionShell) -> Self {
        match shell {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// Prints the completion script for `shell` to `out`.
pub fn completions(shell: CompletionShell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    let shell: clap_complete::Shell = shell.into();
    clap_complete::generate(shell, &mut Cli::command(), "lbmanager", out);
}

/// Writes a man page per command and subcommand into `dir`.
pub fn manpages(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    // No `build()` before: generate_to builds with the help subcommand off (else it would
    // write pages for `help` too).
    clap_mangen::generate_to(Cli::command(), dir)
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Write a member key and, with --wait, return once AWS has the member.
    ///
    /// Writes it as `etcdctl put KEY ""` does. Exit 0: done; 1: timed out, or AWS rejected the
    /// member (AWS's reason is printed); 2: bad flags or a key that is not a member key.
    Add(AddArgs),
    /// Delete a member key and, with --wait, return once AWS no longer routes to the member.
    ///
    /// Deletes it as `etcdctl del KEY` does. Exit 0: done; 1: timed out or failed; 2: bad flags
    /// or key.
    Remove(RemoveArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// The member key, e.g. /lbManager/elb/us-east-1/webLB/multiple/i-0abc (the grammar is in
    /// `lbmanager --help`).
    pub key: String,

    /// Return only when AWS has the member: registered with the ELB; registered and not draining
    /// in the target group; the value in the record set.
    #[arg(long, env = "LBMANAGER_MEMBER_WAIT")]
    pub wait: bool,

    /// With --wait: wait further until AWS reports the member healthy (a target group's
    /// `healthy`, a Classic ELB's `InService`, a Route53 value's health check under
    /// --route53-health-check). A Route53 value without a check has no health: the same as
    /// --wait.
    #[arg(long, env = "LBMANAGER_MEMBER_HEALTHY", requires = "wait")]
    pub healthy: bool,

    /// How long --wait waits before giving up (exit 1; the key stays written, unless it is under
    /// --lease-ttl).
    #[arg(long, env = "LBMANAGER_MEMBER_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Write the key under an etcd lease of this TTL and stay in the foreground keeping it alive
    /// until SIGTERM or SIGINT, then delete the key. If this process (or its host) dies, the key
    /// goes when the lease runs out, and lbmanager removes the member.
    #[arg(long, env = "LBMANAGER_MEMBER_LEASE_TTL", value_parser = parse_ttl)]
    pub lease_ttl: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// The member key, e.g. /lbManager/elb/us-east-1/webLB/multiple/i-0abc.
    pub key: String,

    /// Return only when AWS no longer routes to the member: deregistered from the ELB, draining
    /// or gone from the target group, the value gone from the record set.
    #[arg(long, env = "LBMANAGER_MEMBER_WAIT")]
    pub wait: bool,

    /// Implies --wait, and waits further for the connections in flight: until the target group
    /// has finished draining the target (its deregistration delay), or for the record's TTL
    /// (Route53), so that clients still holding the old answer are done. A Classic ELB's
    /// deregistration returns at once: the same as --wait.
    #[arg(long, env = "LBMANAGER_MEMBER_DRAIN")]
    pub drain: bool,

    /// How long --wait (or --drain) waits before giving up (exit 1; the key stays deleted). With
    /// --drain, make it longer than the target group's deregistration delay (300s unless set
    /// otherwise) or the record's TTL.
    #[arg(long, env = "LBMANAGER_MEMBER_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// Output: a table for people, or JSON for scripts.
    #[arg(long, env = "LBMANAGER_STATUS_OUTPUT", value_enum, default_value_t = PlanOutput::Table)]
    pub output: PlanOutput,
}

/// `explain`: etcd (lbmanager's records), the filters to judge by, and the output.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The member key or load balancer to explain.
    pub key: String,

    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// The filters the running lbmanager was given, to say whether they leave KEY out.
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Output: sentences for people, or JSON for scripts.
    #[arg(long, env = "LBMANAGER_EXPLAIN_OUTPUT", value_enum, default_value_t = PlanOutput::Table)]
    pub output: PlanOutput,
}

/// `plan`: what it reads (etcd, AWS) and how `run` would sync, nothing of running a daemon.
#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub route53: Route53Args,
    #[command(flatten)]
    pub sync: SyncArgs,
    #[command(flatten)]
    pub log: LogArgs,

    /// Output: a table for people, or JSON for scripts.
    #[arg(long, env = "LBMANAGER_PLAN_OUTPUT", value_enum, default_value_t = PlanOutput::Table,
          help_heading = "Output")]
    pub output: PlanOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlanOutput {
    Table,
    Json,
}

/// How to reach etcd: every command has them.
#[derive(Clone, Debug, Args)]
pub struct EtcdArgs {
    /// etcd v3 endpoints, comma-separated; lbmanager fails over between them.
    #[arg(
        long,
        env = "ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,

    /// etcd user name, for an etcd with authentication enabled.
    #[arg(long, env = "ETCD_USER")]
    pub etcd_user: Option<String>,

    /// File holding the etcd user's password (first line). Or set ETCD_PASSWORD; there is no
    /// password flag, so the password never shows in a process listing.
    #[arg(long, env = "ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<std::path::PathBuf>,

    /// CA certificate (PEM) to verify etcd's server certificate (https:// endpoints).
    #[arg(long, env = "ETCD_CA_FILE")]
    pub etcd_ca_file: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for etcd's client-certificate authentication.
    #[arg(long, env = "ETCD_CERT_FILE", requires = "etcd_key_file")]
    pub etcd_cert_file: Option<std::path::PathBuf>,

    /// Private key (PEM) of --etcd-cert-file.
    #[arg(long, env = "ETCD_KEY_FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<std::path::PathBuf>,

    /// How long to keep trying to reach etcd at start before giving up with an error (systemd
    /// restarts the service). Also how long a request whose etcd member goes away, loses its
    /// leader or sees the leader change is sent again through the members that answer (every
    /// command, and the daemon's reads of the whole prefix).
    #[arg(long, env = "LBMANAGER_ETCD_CONNECT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub etcd_connect_timeout: Duration,

    /// The etcd key prefix of the member tree.
    #[arg(long, env = "LBMANAGER_PREFIX", default_value = "/lbManager", value_parser = parse_prefix)]
    pub prefix: String,
}

/// `run`: the daemon.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub route53: Route53Args,
    #[command(flatten)]
    pub sync: SyncArgs,
    #[command(flatten)]
    pub ha: HaArgs,
    #[command(flatten)]
    pub log: LogArgs,

    /// How often every managed load balancer is read back from AWS and corrected (drift made by
    /// hand); also the retry interval after errors that retrying soon can't fix. E.g. 30s, 5m.
    #[arg(long, env = "LBMANAGER_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_interval,
          help_heading = "Running")]
    pub resync_interval: Duration,

    /// Do everything but change AWS (and etcd): log what would be registered, deregistered or
    /// changed instead.
    #[arg(long, env = "LBMANAGER_DRY_RUN", help_heading = "Running")]
    pub dry_run: bool,

    /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9090). Off by default.
    #[arg(long, env = "LBMANAGER_LISTEN", help_heading = "Running")]
    pub listen: Option<std::net::SocketAddr>,

    /// Sync every load balancer once, then exit: 0 when all are in step, 1 otherwise.
    #[arg(long, env = "LBMANAGER_ONCE", help_heading = "Running")]
    pub once: bool,
}

/// How lbmanager reaches AWS, and how much of AWS's quotas it takes.
#[derive(Debug, Args)]
#[command(next_help_heading = "AWS")]
pub struct AwsArgs {
    /// A custom AWS endpoint for both ELB and Route53 (moto, LocalStack, a VPC endpoint).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,

    /// The longest one AWS call may take, its retries included.
    #[arg(long, env = "LBMANAGER_AWS_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub aws_timeout: Duration,

    /// The share of AWS's published API quotas lbmanager allows itself, leaving the rest to the
    /// account's other tools. lbmanager paces every call with AWS's own token buckets: Elastic
    /// Load Balancing per account and region, each API version apart (every call: 40, refilled
    /// 10/s; Register/Deregister: 20, 4/s; Describe: 40, 10/s); Route53 per account (every
    /// request: 50, 10/s; each operation: 50, 10/s; record changes: see
    /// --route53-change-burst). One token of each bucket is kept in reserve and refills are paced
    /// 1% below AWS's. Values above 1 exceed AWS's
    /// quotas: only for endpoints that do not throttle (moto, tests) or raised quotas.
    #[arg(long, env = "LBMANAGER_AWS_QUOTA_SHARE", default_value_t = 1.0, value_parser = parse_share)]
    pub aws_quota_share: f64,

    /// Route53's change-throughput bucket (per account): how many record-set changes may go at
    /// once, a CREATE or DELETE counting 1 and an UPSERT 2. The default is AWS's published figure
    /// (1,500 at once, 100 a second; Route53 developer guide, "Throttling for Amazon Route 53 API
    /// requests"); set both flags if your account's differs.
    #[arg(long, env = "LBMANAGER_ROUTE53_CHANGE_BURST", default_value_t = crate::aws::quota::route53::CHANGES.capacity,
          value_parser = parse_rate)]
    pub route53_change_burst: f64,

    /// Route53's change-throughput bucket: record changes per second, once the burst is spent.
    #[arg(long, env = "LBMANAGER_ROUTE53_CHANGE_RATE", default_value_t = crate::aws::quota::route53::CHANGES.refill,
          value_parser = parse_rate)]
    pub route53_change_rate: f64,

    /// SCOPE=ROLE_ARN[#EXTERNAL_ID]: reach the load balancers or zones of SCOPE (elb/REGION/NAME,
    /// elbv2/REGION/NAME or route53/ZONE_ID; `*` for a whole part) with STS AssumeRole
    /// credentials of ROLE_ARN (cached and refreshed before they expire), e.g.
    /// 'elb/us-east-1/acctLB=arn:aws:iam::111111111111:role/lbmanager'. Repeatable, the first
    /// matching rule wins; everything else uses the default credentials. Each account has its own
    /// quota buckets, shared by the roles into it. In the environment variable, separate rules
    /// with spaces.
    #[arg(long = "assume-role", env = "LBMANAGER_ASSUME_ROLE", value_delimiter = ' ',
          value_parser = crate::aws::roles::parse_rule)]
    pub assume_role: Vec<crate::aws::roles::RoleRule>,
}

/// The record sets lbmanager writes.
#[derive(Debug, Args)]
#[command(next_help_heading = "Route53")]
pub struct Route53Args {
    /// TTL in seconds of the A/AAAA record sets lbmanager writes.
    #[arg(long, env = "LBMANAGER_ROUTE53_TTL", default_value_t = 60,
          value_parser = clap::value_parser!(i64).range(0..=2_147_483_647))]
    pub route53_ttl: i64,

    /// SCOPE=PROTOCOL:PORT[/PATH]: publish the FQDNs of SCOPE (route53/ZONE_ID/FQDN; `*` for a
    /// whole part) as multivalue answers, one record set per value, each with a Route53 health
    /// check of that IP (PROTOCOL HTTP, HTTPS or TCP; PATH for HTTP(S), `/` by default; the FQDN
    /// is sent as the Host header), so that Route53 leaves unhealthy values out of its answers.
    /// E.g. 'route53/Z123/www.example.com=HTTP:80/health'. Repeatable, the first matching rule
    /// wins; other FQDNs keep one simple record set. lbmanager makes and deletes these checks
    /// itself (billed per check and month; 200 per account by default: README, Limits). Not with
    /// --ownership shared. In the environment variable, separate rules with spaces.
    #[arg(long = "route53-health-check", env = "LBMANAGER_ROUTE53_HEALTH_CHECK",
          value_delimiter = ' ', value_parser = crate::health_check::parse_rule)]
    pub route53_health_check: Vec<crate::health_check::HealthRule>,
}

/// Which load balancers lbmanager touches, and what it may do to them.
#[derive(Debug, Args)]
#[command(next_help_heading = "What to sync")]
pub struct SyncArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// sync: make AWS match etcd. upsert-only: only add (never deregister an instance, remove a
    /// value or delete a record set).
    #[arg(long, env = "LBMANAGER_POLICY", value_enum, default_value_t = PolicyArg::Sync)]
    pub policy: PolicyArg,

    /// exclusive: etcd lists every member of a load balancer lbmanager touches; anything else is
    /// removed. shared: other tools (an Auto Scaling group, a hand-registered canary) feed the same
    /// load balancers: lbmanager removes only members it added itself, recorded in etcd before
    /// each add (one write per added member), and keeps a record set's other values.
    #[arg(long, env = "LBMANAGER_OWNERSHIP", value_enum, default_value_t = OwnershipArg::Exclusive)]
    pub ownership: OwnershipArg,
}

/// `--elb-filter` and `--zone-filter`: which load balancers lbmanager touches at all.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only touch these Classic ELBs and target groups: comma list of REGION/NAME, `*` for any
    /// region or name (e.g. us-east-1/web,eu-west-1/*). Keys of others are warned about and ignored.
    #[arg(long, env = "LBMANAGER_ELB_FILTER", value_delimiter = ',')]
    pub elb_filter: Vec<String>,

    /// Only touch these Route53 hosted zones: comma list of zone ids. Keys of other zones are
    /// warned about and ignored.
    #[arg(long, env = "LBMANAGER_ZONE_FILTER", value_delimiter = ',')]
    pub zone_filter: Vec<String>,
}

impl FilterArgs {
    pub fn filters(&self) -> crate::filter::Filters {
        crate::filter::Filters {
            elb: self.elb_filter.clone(),
            zones: self.zone_filter.clone(),
        }
    }
}

/// `--ha`: a leader among several instances.
#[derive(Debug, Args)]
#[command(next_help_heading = "High availability")]
pub struct HaArgs {
    /// High availability: elect a leader among the lbmanager instances through etcd; only the
    /// leader calls AWS, a standby takes over when it dies.
    #[arg(long = "ha", env = "LBMANAGER_HA")]
    pub enabled: bool,

    /// With --ha: the leader's etcd lease. A standby takes over this long after the leader died;
    /// the leader stops on its own when the lease goes unconfirmed for two thirds of it.
    #[arg(long = "ha-lease-ttl", env = "LBMANAGER_HA_LEASE_TTL", default_value = "10s",
          value_name = "HA_LEASE_TTL", value_parser = parse_ttl)]
    pub lease_ttl: Duration,
}

/// The log.
#[derive(Debug, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log level.
    #[arg(long, env = "LBMANAGER_LOG_LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Log format: text (for people; coloured on a terminal) or json (one object a line, for log
    /// shippers).
    #[arg(long, env = "LBMANAGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A prefix is an absolute etcd path; a trailing slash is dropped.
fn parse_prefix(s: &str) -> Result<String, String> {
    let p = s.trim_end_matches('/');
    if !s.starts_with('/') || p.is_empty() {
        return Err("the prefix must start with / and name something, like /lbManager".into());
    }
    Ok(p.to_string())
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err("must be a number of calls per second above 0, like 5 or 0.5".into()),
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1000.0 => Ok(r),
        _ => Err("must be a share of AWS's quotas above 0, like 1 (all of them) or 0.5".into()),
    }
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(2) {
        return Err("must be at least 2s".into());
    }
    Ok(d)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

impl Route53Args {
    /// Flags that cannot go together.
    pub fn check(&self, sync: &SyncArgs) -> Result<(), &'static str> {
        if !self.route53_health_check.is_empty() && sync.ownership() == Ownership::Shared {
            return Err(
                "--route53-health-check takes the FQDNs of its scopes as lbmanager's \
                alone: it cannot be used with --ownership shared",
            );
        }
        Ok(())
    }
}

impl SyncArgs {
    pub fn filters(&self) -> crate::filter::Filters {
        self.filter.filters()
    }

    pub fn ownership(&self) -> Ownership {
        self.ownership.into()
    }
}

impl AwsArgs {
    /// The SDK clients' options.
    pub fn client_options(&self) -> crate::aws::ClientOptions {
        crate::aws::ClientOptions {
            endpoint_url: self.aws_endpoint_url.clone(),
            timeout: self.aws_timeout,
        }
    }

    /// The share of AWS's quotas the flags allow.
    pub fn quotas(&self) -> crate::aws::Quotas {
        crate::aws::Quotas {
            share: self.aws_quota_share,
            route53_changes: crate::aws::quota::Bucket::new(
                self.route53_change_burst,
                self.route53_change_rate,
            ),
        }
    }
}

impl LogArgs {
    /// The logger the flags ask for.
    pub fn logger(&self) -> slog::Logger {
        crate::logging::logger(self.log_level.into(), self.log_format)
    }
}

/// `--ownership`: the flag's spelling of [`crate::ownership::Ownership`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OwnershipArg {
    /// etcd lists every member: anything else is removed (the original's semantics).
    Exclusive,
    /// Remove only members lbmanager added; keep the others'.
    Shared,
}

impl From<OwnershipArg> for crate::ownership::Ownership {
    fn from(o: OwnershipArg) -> Self {
        match o {
            OwnershipArg::Exclusive => crate::ownership::Ownership::Exclusive,
            OwnershipArg::Shared => crate::ownership::Ownership::Shared,
        }
    }
}

/// `--policy`: the flag's spelling of [`crate::plan::Policy`] (the planner knows nothing of clap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Make AWS match etcd: add and remove.
    Sync,
    /// Only add: never deregister an instance, never remove a value or delete a record set.
    UpsertOnly,
}

impl From<PolicyArg> for crate::plan::Policy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Sync => crate::plan::Policy::Sync,
            PolicyArg::UpsertOnly => crate::plan::Policy::UpsertOnly,
        }
    }
}

impl EtcdArgs {
    /// How to reach etcd, from the flags (the password read from its file or `ETCD_PASSWORD`).
    pub fn options(&self) -> Result<crate::etcd::EtcdOptions, String> {
        let args = self;
        let password = match (&args.etcd_password_file, std::env::var("ETCD_PASSWORD")) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
            (None, Ok(p)) => Some(p),
            (None, Err(_)) => None,
        };
        let user = match (&args.etcd_user, password) {
            (Some(u), Some(p)) => Some((u.clone(), p)),
            (Some(_), None) => {
                return Err("--etcd-user needs ETCD_PASSWORD or --etcd-password-file".into())
            }
            (None, _) => None,
        };
        Ok(crate::etcd::EtcdOptions {
            endpoints: args.etcd_endpoints.clone(),
            user,
            ca_file: args.etcd_ca_file.clone(),
            cert_key: args.etcd_cert_file.clone().zip(args.etcd_key_file.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_help_and_an_env_twin() {
        Cli::command().debug_assert();
        let cmd = Cli::command();
        let member = cmd.find_subcommand("member").unwrap();
        let args = ["run", "plan", "status"]
            .iter()
            .map(|c| cmd.find_subcommand(c).unwrap())
            .chain(["add", "remove"].map(|c| member.find_subcommand(c).unwrap()))
            .flat_map(|c| c.get_arguments());
        for arg in args {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" || arg.is_positional() {
                continue;
            }
            assert!(arg.get_help().is_some(), "{id} has no help");
            assert!(arg.get_env().is_some(), "{id} has no env twin");
        }
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "lbmanager",
            "run",
            "--etcd-endpoints",
            "http://a:2379,http://b:2379",
            "--prefix",
            "/lb/",
            "--resync-interval",
            "90s",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("parsed as run")
        };
        assert_eq!(
            args.etcd.etcd_endpoints,
            vec!["http://a:2379", "http://b:2379"]
        );
        assert_eq!(args.etcd.prefix, "/lb");
        assert_eq!(args.resync_interval, Duration::from_secs(90));
        for bad in [
            vec!["lbmanager", "run", "--prefix", "lb"],
            vec!["lbmanager", "run", "--route53-ttl", "-1"],
            vec!["lbmanager", "run", "--resync-interval", "0s"],
            vec!["lbmanager", "run", "--log-level", "loud"],
            vec!["lbmanager", "run", "--no-such-flag"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }
}
