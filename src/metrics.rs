//! Prometheus metrics and the health state behind `/metrics`, `/healthz` and `/readyz`
//! (prometheus-client, text format; every name starts with `lbmanager_`).
//!
//! One [`Metrics`] is shared by every actor through [`crate::actors::Settings`]; updating it is a
//! few atomic operations, so it costs nothing when nobody scrapes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::escape::escape;

/// The bounds of the README's "Limits" that lbmanager counts when met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// A key longer than [`crate::key::MAX_KEY_BYTES`], refused.
    KeyLength,
    /// Malformed keys past those remembered (warned about once each), not warned one by one.
    WarnedKeys,
    /// Wanted members past AWS's maximum per load balancer, not registered.
    MembersPerLoadBalancer,
    /// Values past Route53's maximum per record set, not written.
    ValuesPerRecordSet,
    /// A record cut down to fit its bound (rejected members or reasons left out).
    RecordSize,
    /// A record etcd refused for its size.
    RecordRefused,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::KeyLength => "key_length",
            Limit::WarnedKeys => "warned_keys",
            Limit::MembersPerLoadBalancer => "members_per_load_balancer",
            Limit::ValuesPerRecordSet => "values_per_record_set",
            Limit::RecordSize => "record_size",
            Limit::RecordRefused => "record_refused",
        }
    }
}

// Label sets, typed: a label's name is a field's, written once, and a family takes no other.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: String,
    operation: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindResultLabels {
    kind: &'static str,
    result: &'static str,
}

/// A load balancer, as its metrics name it (escaped: see [`crate::escape`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LbLabels {
    load_balancer: String,
}

impl LbLabels {
    fn of(lb: &str) -> Self {
        LbLabels {
            load_balancer: escape(lb).into_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LbResultLabels {
    load_balancer: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

type HistogramFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

fn sync_histogram() -> Histogram {
    // 5 ms to ~20 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

fn ok_or_error(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "error"
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Every metric of lbmanager's. Each one's help text is where it is registered ([`Metrics::new`]),
/// once; the families (a series per label set) change only through the methods below, so a
/// label is never misspelt or left out.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    aws_calls: Family<CallLabels, Counter>,
    syncs: Family<KindResultLabels, Counter>,
    sync_duration: HistogramFamily,
    members: Family<LbLabels, Gauge>,
    rejected_members: Family<LbLabels, Gauge>,
    lb_syncs: Family<LbResultLabels, Counter>,
    lb_failures: Family<LbLabels, Gauge>,
    lb_last_success: Family<LbLabels, Gauge<f64, AtomicU64>>,
    limits: Family<LimitLabels, Counter>,
    pub ready: Gauge,
    pub watch_up: Gauge,
    pub syncs_pending: Gauge,
    pub watch_revision: Gauge,
    pub watch_reconnects: Counter,
    pub last_full_sync: Gauge<f64, AtomicU64>,
    pub records_unwritten: Gauge,
    pub route53_changes_pending: Gauge,
    /// Still `PENDING` after [`crate::actors::Settings::route53_slow_change`].
    pub route53_changes_slow: Counter,
    initial_sync_done: AtomicBool,
    watch_live: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lbmanager");
        let m = Metrics {
            aws_calls: Family::default(),
            syncs: Family::default(),
            sync_duration: Family::new_with_constructor(sync_histogram),
            members: Family::default(),
            rejected_members: Family::default(),
            lb_syncs: Family::default(),
            lb_failures: Family::default(),
            lb_last_success: Family::default(),
            limits: Family::default(),
            ready: Gauge::default(),
            watch_up: Gauge::default(),
            syncs_pending: Gauge::default(),
            watch_revision: Gauge::default(),
            watch_reconnects: Counter::default(),
            last_full_sync: Gauge::default(),
            records_unwritten: Gauge::default(),
            route53_changes_pending: Gauge::default(),
            route53_changes_slow: Counter::default(),
            initial_sync_done: AtomicBool::new(false),
            watch_live: AtomicBool::new(false),
            registry: Registry::default(),
        };
        // Each metric: its field, its name and its help text.
        macro_rules! register {
            ($($field:ident $name:literal $help:literal)*) => {
                $(registry.register($name, $help, m.$field.clone());)*
            };
        }
        register! {
            aws_calls "aws_calls" "AWS calls by service, operation and result"
            syncs "syncs" "Syncs by load balancer kind and result"
            sync_duration "sync_duration_seconds"
                "How long a sync took, from the first read to the last change"
            members "members" "Desired members per load balancer"
            rejected_members "rejected_members"
                "Wanted members AWS refuses to register (terminated instances), per load balancer"
            lb_syncs "load_balancer_syncs" "Syncs by load balancer and result"
            lb_failures "load_balancer_failures"
                "Failed syncs in a row, per load balancer (0 after a sync that succeeded)"
            lb_last_success "load_balancer_last_success_timestamp_seconds"
                "Unix time of the load balancer's last sync that succeeded (resyncs included)"
            ready "ready"
                "1 while ready (the start-up sync is done and the etcd watch is live), as /readyz"
            watch_up "etcd_watch_up" "1 while the etcd watch is live"
            syncs_pending "syncs_pending" "Syncs running or waiting for a retry"
            watch_revision "etcd_watch_revision" "The last etcd revision the watch delivered"
            watch_reconnects "etcd_watch_reconnects"
                "Times the etcd watch broke and was re-established"
            last_full_sync "last_full_sync_timestamp_seconds"
                "Unix time of the last full sync after which every load balancer was in step"
            limits "limit_exceeded" "Times a documented limit was met (README, Limits), by limit"
            records_unwritten "records_unwritten"
                "lbmanager's own etcd records that cannot be written as they are now"
            route53_changes_pending "route53_changes_pending"
                "Route53 changes accepted and not yet on every Route53 name server (INSYNC)"
            route53_changes_slow "route53_changes_slow"
                "Route53 changes still PENDING after the time Route53 usually takes (README, Limits)"
        }
        Metrics { registry, ..m }
    }

    /// The metrics in Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn set_initial_sync_done(&self) {
        self.initial_sync_done.store(true, Ordering::SeqCst);
        self.ready.set(i64::from(self.ready()));
    }

    pub fn set_watch_live(&self, live: bool) {
        self.watch_live.store(live, Ordering::SeqCst);
        self.watch_up.set(i64::from(live));
        self.ready.set(i64::from(self.ready()));
    }

    /// Counts one time a limit was met.
    pub fn limit(&self, limit: Limit) {
        self.limits
            .get_or_create(&LimitLabels {
                limit: limit.as_str(),
            })
            .inc();
    }

    /// Counts a sync of a load balancer of `kind` (`elb`, `elbv2`, `route53`) that took `took`.
    pub fn synced(&self, kind: &'static str, ok: bool, took: std::time::Duration) {
        let result = ok_or_error(ok);
        self.syncs
            .get_or_create(&KindResultLabels { kind, result })
            .inc();
        self.sync_duration
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }

    /// Counts a load balancer's sync; `failures`: its failed syncs in a row since.
    pub fn lb_synced(&self, lb: &str, ok: bool, failures: u32) {
        let label = LbLabels::of(lb);
        self.lb_syncs
            .get_or_create(&LbResultLabels {
                load_balancer: label.load_balancer.clone(),
                result: ok_or_error(ok),
            })
            .inc();
        self.lb_failures
            .get_or_create(&label)
            .set(i64::from(failures));
        if ok {
            self.lb_last_success.get_or_create(&label).set(unix_now());
        }
    }

    /// The members `lb` should have now.
    pub fn members(&self, lb: &str, count: usize) {
        self.members
            .get_or_create(&LbLabels::of(lb))
            .set(count as i64);
    }

    /// The wanted members AWS refuses (or a limit leaves out) of `lb` now (0: the series goes).
    pub fn rejected_members(&self, lb: &str, count: usize) {
        let label = LbLabels::of(lb);
        if count == 0 {
            self.rejected_members.remove(&label);
        } else {
            self.rejected_members
                .get_or_create(&label)
                .set(count as i64);
        }
    }

    /// Forgets a load balancer lbmanager no longer manages.
    pub fn lb_retired(&self, lb: &str) {
        let label = LbLabels::of(lb);
        self.members.remove(&label);
        self.lb_failures.remove(&label);
        self.lb_last_success.remove(&label);
        for result in ["ok", "error"] {
            self.lb_syncs.remove(&LbResultLabels {
                load_balancer: label.load_balancer.clone(),
                result,
            });
        }
    }

    /// Ready: the start-up sync is done and the etcd watch is live.
    pub fn ready(&self) -> bool {
        self.initial_sync_done.load(Ordering::SeqCst) && self.watch_live.load(Ordering::SeqCst)
    }

    /// Counts one AWS call: `operation` is AWS's name of it (`DescribeLoadBalancers`), `result`
    /// `ok` or an [`crate::aws::ErrorKind`]'s name.
    pub fn aws_call(&self, service: &str, operation: &str, result: &str) {
        self.aws_calls
            .get_or_create(&CallLabels {
                service: service.to_string(),
                operation: operation.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// The last full sync after which every load balancer was in step ended now.
    pub fn full_sync_done(&self) {
        self.last_full_sync.set(unix_now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_with_prefix() {
        let m = Metrics::new();
        m.aws_call("elb", "DescribeLoadBalancers", "ok");
        m.syncs_pending.inc();
        let text = m.encode();
        assert!(
            text.contains("# TYPE lbmanager_aws_calls counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "lbmanager_aws_calls_total{service=\"elb\",operation=\"DescribeLoadBalancers\",result=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("lbmanager_syncs_pending 1"));
        // A load balancer's series, its name escaped; a count of 0 refusals drops the series.
        m.synced("elb", true, std::time::Duration::from_millis(3));
        m.rejected_members("elb/us-east-1/w\u{1b}b", 2);
        let text = m.encode();
        assert!(text.contains("lbmanager_syncs_total{kind=\"elb\",result=\"ok\"} 1"));
        assert!(
            text.contains(
                "lbmanager_rejected_members{load_balancer=\"elb/us-east-1/w\\\\u{1b}b\"} 2"
            ),
            "{text}"
        );
        m.rejected_members("elb/us-east-1/w\u{1b}b", 0);
        assert!(!m.encode().contains("lbmanager_rejected_members{"));
        assert!(text.ends_with("# EOF\n"));
        assert!(!m.ready());
        m.set_initial_sync_done();
        m.set_watch_live(true);
        assert!(m.ready());
    }
}
