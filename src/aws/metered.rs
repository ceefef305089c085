//! Decorators that count every AWS call in [`Metrics`] by service, operation and result, around
//! any implementation of the traits (so the SDK clients stay free of bookkeeping).

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;

use super::{AwsError, ChangeId, ChangeState, ElbApi, ErrorKind, Permit, Route53Api};
use crate::health_check::{CheckSpec, HealthCheck};
use crate::key::Target;
use crate::metrics::Metrics;
use crate::plan::{RecordChange, RecordSet, Registered};

fn result<T>(r: &Result<T, AwsError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => match e.kind {
            ErrorKind::Throttled => "throttled",
            ErrorKind::Transient => "transient",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Rejected => "rejected",
            ErrorKind::InvalidMember => "invalid_member",
        },
    }
}

/// Counts the calls of an [`ElbApi`]; `service` is `elb` or `elbv2`.
pub struct MeteredElb {
    pub inner: Arc<dyn ElbApi>,
    pub metrics: Arc<Metrics>,
    pub service: &'static str,
}

#[async_trait]
impl ElbApi for MeteredElb {
    async fn members(&self, region: &str, name: &str) -> Result<Registered, AwsError> {
        let r = self.inner.members(region, name).await;
        self.metrics.aws_call(self.service, "describe", result(&r));
        r
    }

    async fn health(
        &self,
        region: &str,
        name: &str,
    ) -> Result<std::collections::BTreeMap<Target, crate::plan::Health>, AwsError> {
        let r = self.inner.health(region, name).await;
        self.metrics
            .aws_call(self.service, "describe_health", result(&r));
        r
    }

    async fn permit(&self, region: &str, name: &str) -> Permit {
        self.inner.permit(region, name).await
    }

    async fn register(
        &self,
        region: &str,
        name: &str,
        ids: &[Target],
        paid: Permit,
    ) -> Result<(), AwsError> {
        let r = self.inner.register(region, name, ids, paid).await;
        self.metrics.aws_call(self.service, "register", result(&r));
        r
    }

    async fn deregister(
        &self,
        region: &str,
        name: &str,
        ids: &[Target],
        paid: Permit,
    ) -> Result<(), AwsError> {
        let r = self.inner.deregister(region, name, ids, paid).await;
        self.metrics
            .aws_call(self.service, "deregister", result(&r));
        r
    }
}

/// Counts the calls of a [`Route53Api`].
pub struct MeteredRoute53 {
    pub inner: Arc<dyn Route53Api>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl Route53Api for MeteredRoute53 {
    async fn record_sets(&self, zone: &str, fqdn: &str) -> Result<Vec<RecordSet>, AwsError> {
        let r = self.inner.record_sets(zone, fqdn).await;
        self.metrics.aws_call("route53", "list_name", result(&r));
        r
    }

    async fn zone_record_sets(&self, zone: &str) -> Result<Vec<RecordSet>, AwsError> {
        let r = self.inner.zone_record_sets(zone).await;
        self.metrics.aws_call("route53", "list_zone", result(&r));
        r
    }

    async fn change(&self, zone: &str, changes: &[RecordChange]) -> Result<ChangeId, AwsError> {
        let r = self.inner.change(zone, changes).await;
        self.metrics.aws_call("route53", "change", result(&r));
        r
    }

    async fn change_state(&self, zone: &str, id: &str) -> Result<ChangeState, AwsError> {
        let r = self.inner.change_state(zone, id).await;
        self.metrics.aws_call("route53", "get_change", result(&r));
        r
    }

    async fn zone_size(&self, zone: &str) -> Result<u64, AwsError> {
        let r = self.inner.zone_size(zone).await;
        self.metrics.aws_call("route53", "get_zone", result(&r));
        r
    }

    async fn health_checks(&self, zone: &str, prefix: &str) -> Result<Vec<HealthCheck>, AwsError> {
        let r = self.inner.health_checks(zone, prefix).await;
        self.metrics
            .aws_call("route53", "list_health_checks", result(&r));
        r
    }

    async fn create_health_check(
        &self,
        zone: &str,
        reference: &str,
        fqdn: &str,
        ip: IpAddr,
        spec: &CheckSpec,
    ) -> Result<String, AwsError> {
        let r = self
            .inner
            .create_health_check(zone, reference, fqdn, ip, spec)
            .await;
        self.metrics
            .aws_call("route53", "create_health_check", result(&r));
        r
    }

    async fn delete_health_check(&self, zone: &str, id: &str) -> Result<(), AwsError> {
        let r = self.inner.delete_health_check(zone, id).await;
        self.metrics
            .aws_call("route53", "delete_health_check", result(&r));
        r
    }

    async fn health_check_status(&self, zone: &str, id: &str) -> Result<String, AwsError> {
        let r = self.inner.health_check_status(zone, id).await;
        self.metrics
            .aws_call("route53", "get_health_check_status", result(&r));
        r
    }
}
