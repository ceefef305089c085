//! Z: the reads of a resync of 10 Route53 names by the size of their zone (100, 10,000 and
//! 100,000 record sets, nearly all another tool's), for lbmanager's choice and for each strategy
//! alone: one paged read of the whole zone (300 record sets a page) or one name-targeted read per
//! name. Counted against a Route53 of the benchmark's own that holds the zone's size and pages as
//! Route53 does (moto cannot hold 100,000 record sets in a benchmark's time); the calls are what
//! Route53's 10-a-second account bucket is spent on.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use lbmanager::aws::{AwsError, ChangeId, ChangeState, Route53Api};
use lbmanager::health_check::{CheckSpec, HealthCheck};
use lbmanager::key::LbId;
use lbmanager::plan::{Policy, RecordChange, RecordSet};
use lbmanager::sync::zone::{sync_zone, FqdnWant, ZoneCache};
use lbmanager::sync::{Cause, SyncOptions};

use super::common::Row;

/// A zone of `size` record sets, none of them the names': counts the reads.
struct Sized {
    size: u64,
    reads: AtomicUsize,
}

#[async_trait]
impl Route53Api for Sized {
    async fn record_sets(&self, _: &str, _: &str) -> Result<Vec<RecordSet>, AwsError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(Vec::new())
    }

    async fn zone_record_sets(&self, _: &str) -> Result<Vec<RecordSet>, AwsError> {
        let pages = self.size.div_ceil(300).max(1) as usize;
        self.reads.fetch_add(pages, Ordering::SeqCst);
        Ok(Vec::new())
    }

    async fn change(&self, _: &str, _: &[RecordChange]) -> Result<ChangeId, AwsError> {
        Ok("/change/C1".into())
    }

    async fn change_state(&self, _: &str, _: &str) -> Result<ChangeState, AwsError> {
        Ok(ChangeState::InSync)
    }

    async fn zone_size(&self, _: &str) -> Result<u64, AwsError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(self.size)
    }

    // No name of the benchmark is in a --route53-health-check scope: the zone's checks are
    // listed once, at start-up (not counted: no record set is read), and none is made.
    async fn health_checks(&self, _: &str) -> Result<Vec<HealthCheck>, AwsError> {
        Ok(Vec::new())
    }

    async fn create_health_check(
        &self,
        _: &str,
        _: &str,
        _: std::net::IpAddr,
        _: &CheckSpec,
    ) -> Result<String, AwsError> {
        unreachable!("no health checks in this scenario")
    }

    async fn tag_health_check(
        &self,
        _: &str,
        _: &[(&'static str, String)],
    ) -> Result<(), AwsError> {
        unreachable!("no health checks in this scenario")
    }

    async fn delete_health_check(&self, _: &str) -> Result<(), AwsError> {
        unreachable!("no health checks in this scenario")
    }

    async fn health_check_status(&self, _: &str) -> Result<String, AwsError> {
        unreachable!("no health checks in this scenario")
    }
}

const NAMES: usize = 10;

fn wants(cause: Cause) -> Vec<FqdnWant> {
    (0..NAMES)
        .map(|i| FqdnWant {
            lb: LbId::Route53 {
                zone: "Z1".into(),
                fqdn: format!("h{i}.example.com"),
            },
            fqdn: format!("h{i}.example.com"),
            ips: [format!("192.0.2.{i}").parse().unwrap()].into(),
            cause,
            owned: None,
            check: None,
            dns_busy: false,
        })
        .collect()
}

pub(crate) async fn scenario_z(rows: &mut Vec<Row>) {
    let options = SyncOptions {
        policy: Policy::Sync,
        dry_run: false,
        route53_ttl: 60,
    };
    let log = slog::Logger::root(slog::Discard, slog::o!());
    for size in [100u64, 10_000, 100_000] {
        let r53 = Sized {
            size,
            reads: AtomicUsize::new(0),
        };
        let reads = || r53.reads.swap(0, Ordering::SeqCst);
        let mut cache = ZoneCache::default();
        sync_zone(
            &r53,
            "Z1",
            &wants(Cause::Startup),
            &options,
            &mut cache,
            &log,
            None,
        )
        .await;
        let startup = reads();
        sync_zone(
            &r53,
            "Z1",
            &wants(Cause::Resync),
            &options,
            &mut cache,
            &log,
            None,
        )
        .await;
        let resync = reads();
        // Each strategy alone.
        let _ = r53.zone_record_sets("Z1").await;
        let whole = reads();
        for w in wants(Cause::Resync) {
            let _ = r53.record_sets("Z1", &w.fqdn).await;
        }
        let by_name = reads();
        rows.push(Row {
            scenario: "Z: a resync of 10 Route53 names, by zone size",
            tool: "lbmanager",
            calls: format!("{resync} (start-up {startup})"),
            time: String::new(),
            notes: format!(
                "{size} record sets: whole-zone read {whole} calls, name-targeted reads {by_name}; \
                 start-up adds one GetHostedZone (asked again after 5 minutes)"
            ),
        });
    }
}
