//! Guard rails: which load balancers lbmanager may touch at all (`--elb-filter`, `--zone-filter`).
//! A key for anything outside them is warned about once and ignored, like a malformed key.

use crate::key::LbId;

/// Allow-lists; an empty list allows everything of its kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// `REGION/NAME` entries; `*` matches any region or any name.
    pub elb: Vec<String>,
    /// Hosted zone ids.
    pub zones: Vec<String>,
}

impl Filters {
    pub fn allows(&self, lb: &LbId) -> bool {
        match lb {
            // --elb-filter covers Classic ELBs and target groups alike.
            LbId::Elb { region, name } | LbId::TargetGroup { region, name } => {
                self.elb.is_empty()
                    || self.elb.iter().any(|entry| {
                        let (r, n) = entry.split_once('/').unwrap_or(("*", entry));
                        (r == "*" || r == region) && (n == "*" || n == name)
                    })
            }
            LbId::Route53 { zone, .. } => {
                self.zones.is_empty() || self.zones.iter().any(|z| z == zone)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elb(region: &str, name: &str) -> LbId {
        LbId::Elb {
            region: region.into(),
            name: name.into(),
        }
    }

    fn fqdn(zone: &str) -> LbId {
        LbId::Route53 {
            zone: zone.into(),
            fqdn: "www.example.com".into(),
        }
    }

    #[test]
    fn empty_allows_all() {
        let f = Filters::default();
        assert!(f.allows(&elb("us-east-1", "a")) && f.allows(&fqdn("Z1")));
    }

    #[test]
    fn elb_entries_and_wildcards() {
        let f = Filters {
            elb: vec!["us-east-1/web".into(), "eu-west-1/*".into(), "*/api".into()],
            zones: vec![],
        };
        assert!(f.allows(&elb("us-east-1", "web")));
        assert!(!f.allows(&elb("us-east-1", "other")));
        assert!(f.allows(&elb("eu-west-1", "anything")));
        assert!(f.allows(&elb("ap-south-1", "api")));
        assert!(f.allows(&fqdn("Z9")), "an ELB filter leaves zones alone");
    }

    #[test]
    fn zone_entries() {
        let f = Filters {
            elb: vec![],
            zones: vec!["Z1".into()],
        };
        assert!(f.allows(&fqdn("Z1")));
        assert!(!f.allows(&fqdn("Z2")));
    }
}
