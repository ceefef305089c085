//! One SDK client and one set of quota buckets per region, made on first use: Elastic Load
//! Balancing throttles per account and region (each API version apart), so each region paces its
//! own calls. Used by Classic ELB and ELBv2 alike, each with its own `PerRegion`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::quota::{elb, Quota};
use super::{AwsError, ErrorKind};

type Make<C> = Box<dyn Fn(&str) -> C + Send + Sync>;

/// One account's quota buckets of one API, by region: shared by every client that calls with
/// that account's credentials (two `--assume-role` roles into one account).
pub type RegionQuotas = Arc<Mutex<HashMap<String, Arc<Quota>>>>;

pub struct PerRegion<C> {
    share: f64,
    make: Make<C>,
    clients: Mutex<HashMap<String, C>>,
    quotas: RegionQuotas,
}

impl<C: Clone> PerRegion<C> {
    /// `share`: the part of AWS's published quotas to use; `quotas`: its account's, shared with
    /// other clients of the account; `make` builds a region's client.
    pub fn new(
        share: f64,
        quotas: RegionQuotas,
        make: impl Fn(&str) -> C + Send + Sync + 'static,
    ) -> Self {
        PerRegion {
            share,
            make: Box::new(make),
            clients: Mutex::new(HashMap::new()),
            quotas,
        }
    }

    fn entry(&self, region: &str) -> (C, Arc<Quota>) {
        let client = {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            clients
                .entry(region.to_string())
                .or_insert_with(|| (self.make)(region))
                .clone()
        };
        let mut quotas = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        let quota = quotas
            .entry(region.to_string())
            .or_insert_with(|| Arc::new(elb::quota(self.share)))
            .clone();
        (client, quota)
    }

    /// The region's client, once its quota allows one more `call`.
    pub async fn client(&self, region: &str, call: elb::Call) -> C {
        let (client, quota) = self.entry(region);
        elb::take(&quota, call).await;
        client
    }

    /// Notes a `call` in `region` that failed: a throttle AWS answered paces the region's calls
    /// more slowly for a while (see [`Quota::throttled`]).
    pub fn note(&self, region: &str, call: elb::Call, err: &AwsError) {
        if err.kind == ErrorKind::Throttled {
            elb::throttled(&self.entry(region).1, call);
        }
    }

    /// The region's client, without waiting: for a call already paid for (a permit).
    pub fn paid(&self, region: &str) -> C {
        self.entry(region).0
    }
}
