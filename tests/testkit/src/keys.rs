//! The member tree as the tests write it: the prefix, a few instance ids, and the key of a member
//! of a Classic ELB or a target group (in us-east-1 unless said).

/// The prefix every test's daemon watches (the default `--prefix`).
pub const P: &str = "/lbManager";

/// Instance ids, valid by the key grammar (and by moto).
pub const I1: &str = "i-0123456789abcdef0";
pub const I2: &str = "i-0fedcba9876543210";
pub const I3: &str = "i-0aaaaaaaaaaaaaaaa";

/// `P/elb/us-east-1/LB/CLASS/ID`.
pub fn elb_key(lb: &str, class: &str, id: &str) -> String {
    elb_key_in("us-east-1", lb, class, id)
}

/// `P/elb/REGION/LB/CLASS/ID`.
pub fn elb_key_in(region: &str, lb: &str, class: &str, id: &str) -> String {
    format!("{P}/elb/{region}/{lb}/{class}/{id}")
}

/// `P/elbv2/us-east-1/TG/CLASS/TARGET`.
pub fn tg_key(tg: &str, class: &str, target: &str) -> String {
    format!("{P}/elbv2/us-east-1/{tg}/{class}/{target}")
}

/// `P/route53/us-east-1/ZONE/FQDN/multiple/IP`.
pub fn r53_key(zone: &str, fqdn: &str, ip: &str) -> String {
    format!("{P}/route53/us-east-1/{zone}/{fqdn}/multiple/{ip}")
}
