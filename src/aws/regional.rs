//! One SDK client and one client-side rate limiter per region, made on first use: ELB throttles
//! per account and region, so each region paces its own calls. Used by Classic ELB and ELBv2 alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Limiter;

type Make<C> = Box<dyn Fn(&str) -> C + Send + Sync>;

pub struct PerRegion<C> {
    rate: (f64, u32),
    make: Make<C>,
    clients: Mutex<HashMap<String, (C, Arc<Limiter>)>>,
}

impl<C: Clone> PerRegion<C> {
    /// `rate`: calls per second and burst, per region; `make` builds a region's client.
    pub fn new(rate: (f64, u32), make: impl Fn(&str) -> C + Send + Sync + 'static) -> Self {
        PerRegion {
            rate,
            make: Box::new(make),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The region's client, once its rate limit allows another call.
    pub async fn client(&self, region: &str) -> C {
        let (client, limiter) = {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            clients
                .entry(region.to_string())
                .or_insert_with(|| ((self.make)(region), Arc::new(Limiter::new(self.rate))))
                .clone()
        };
        limiter.wait().await;
        client
    }
}
