//! The live status page on `--listen` (`/`, one page per load balancer): where each load
//! balancer stands, from what the running lbmanager already has in hand (what etcd wants of each,
//! as the fleet keeps it, and the status each actor last published), so that a view costs no etcd
//! read and no AWS call. Pure: what the fleet has in, a [`Board`] (one view's worth), HTML out.
//!
//! A view stays cheap at any scale: the overview is built from counts (no member list is copied),
//! [`PAGE_LBS`] load balancers a page; members are listed on a load balancer's own page only.
//!
//! The HTML comes from maud's templates, which escape every value they are given: a key, an AWS
//! message or a member reaches the page as text, never as markup. The page's only script is
//! served from the binary (`live.js`, under a Content-Security-Policy that allows no other): it
//! fetches the same view's [`fragment`] every second and puts it in place, so the page stays
//! current without a reload and without a CDN or a build step.

use std::collections::{BTreeMap, BTreeSet};

use maud::{html, Markup, DOCTYPE};

use crate::aws::QuotaUse;
use crate::ha::Instance;
use crate::key::{LbId, Member};
use crate::status::table::{age, StatusRow};
use crate::status::{Health, LbStatus, MemberState};

/// The script that keeps a page current (see the module's doc).
pub const LIVE_JS: &str = include_str!("board/live.js");
/// The page's style: small, and readable on a phone.
pub const STYLE_CSS: &str = include_str!("board/style.css");
/// The page's policy: its own script and style only, nothing inline, no frames, no forms
/// elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";
/// Load balancers a page lists (the rest on the next pages).
pub const PAGE_LBS: usize = 200;
/// Refused members a line of the overview names (the rest counted; all on the load balancer's
/// own page).
const REFUSED_NAMED: usize = 3;

/// What the fleet has of one load balancer, borrowed for one view.
pub struct Seen<'a> {
    pub lb: &'a LbId,
    /// What etcd wants.
    pub wanted: &'a BTreeSet<Member>,
    /// The etcd revision of the latest change of its keys.
    pub changed: i64,
    /// Its status as last published.
    pub status: Option<&'a LbStatus>,
}

/// Where a load balancer stands, in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    InStep,
    /// Route53 accepted the change; not every name server answers with it yet.
    Pending,
    /// AWS refuses some members (the rest are in step).
    Refused,
    /// The last sync failed.
    Error,
    /// Not in step yet: a sync is due or under way.
    Syncing,
    /// No status published yet.
    New,
}

impl State {
    pub fn of(seen: &Seen) -> State {
        let Some(status) = seen.status else {
            return State::New;
        };
        if !status.last_sync.ok && status.last_sync.error.is_some() {
            State::Error
        } else if !status.rejected.is_empty() {
            State::Refused
        } else if !status.in_step || status.revision < seen.changed {
            State::Syncing
        } else if !status.dns_pending.is_empty() {
            State::Pending
        } else {
            State::InStep
        }
    }

    fn word(self) -> &'static str {
        match self {
            State::InStep => "in step",
            State::Pending => "Route53 PENDING",
            State::Refused => "refused members",
            State::Error => "error",
            State::Syncing => "syncing",
            State::New => "not synced yet",
        }
    }

    fn class(self) -> &'static str {
        match self {
            State::InStep => "ok",
            State::Pending | State::Syncing | State::New => "busy",
            State::Refused | State::Error => "bad",
        }
    }
}

/// One load balancer on the overview: counts and reasons, no member list.
#[derive(Clone, Debug)]
pub struct Line {
    pub load_balancer: String,
    pub state: State,
    pub wanted: usize,
    pub in_aws: Option<usize>,
    pub health: Option<String>,
    /// Seconds since the last change, and why it ran.
    pub last_change: Option<(u64, String)>,
    pub revision: Option<i64>,
    /// Why it is not in step, in AWS's words (bounded).
    pub reasons: Vec<String>,
}

/// One load balancer's page: its row of `lbmanager status`, and each member.
#[derive(Clone, Debug)]
pub struct One {
    pub state: State,
    pub row: StatusRow,
    pub members: Vec<MemberLine>,
}

/// A member as etcd wants it and as AWS has it.
#[derive(Clone, Debug)]
pub struct MemberLine {
    /// As AWS reports it when AWS has it (a target with its port), else as its key names it.
    pub name: String,
    pub wanted: bool,
    pub in_aws: InAws,
    /// AWS's word for its health.
    pub health: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InAws {
    Yes,
    /// Another tool's (`--ownership shared`).
    Foreign,
    No,
    /// AWS refuses it: why.
    Refused(String),
    /// Not known: AWS not read yet, or past the members a status lists.
    NotListed,
}

/// Each member of `lb`: what etcd wants matched with what AWS has as `status` lists it (a key
/// without a port names the target AWS reports on the group's port).
fn member_lines(
    lb: &LbId,
    wanted: &BTreeSet<Member>,
    status: Option<&LbStatus>,
) -> Vec<MemberLine> {
    let listed = status.map_or(&[][..], |s| &s.members[..]);
    let complete = status.is_some_and(|s| s.members_more == 0);
    let mut matched = vec![false; listed.len()];
    // By spelling first, `names` only where spellings differ (see `status::table`'s `same`).
    let index: std::collections::HashMap<&str, usize> = listed
        .iter()
        .enumerate()
        .map(|(i, m)| (m.member.as_str(), i))
        .collect();
    let mut lines: Vec<MemberLine> = wanted
        .iter()
        .map(|w| {
            let spelled = w.to_string();
            let found = index.get(spelled.as_str()).copied().or_else(|| {
                listed
                    .iter()
                    .position(|m| crate::status::names(lb, w, &m.member))
            });
            if let Some(i) = found {
                matched[i] = true;
            }
            let refused = status.and_then(|s| {
                s.rejected
                    .iter()
                    .find(|(m, _)| *m == spelled || crate::status::names(lb, w, m))
                    .map(|(_, why)| why.to_string())
            });
            let in_aws = match (found, refused) {
                (Some(i), _) if listed[i].foreign => InAws::Foreign,
                (Some(_), _) => InAws::Yes,
                (None, Some(why)) => InAws::Refused(why),
                (None, None) if complete => InAws::No,
                (None, None) => InAws::NotListed,
            };
            MemberLine {
                name: found.map_or_else(|| w.to_string(), |i| listed[i].member.to_string()),
                wanted: true,
                in_aws,
                health: found.and_then(|i| listed[i].state.as_deref().map(String::from)),
            }
        })
        .collect();
    lines.extend(
        listed
            .iter()
            .zip(&matched)
            .filter(|(_, m)| !**m)
            .map(|(m, _)| MemberLine {
                name: m.member.to_string(),
                wanted: false,
                in_aws: if m.foreign {
                    InAws::Foreign
                } else {
                    InAws::Yes
                },
                health: m.state.as_deref().map(String::from),
            }),
    );
    lines.sort_by(|a, b| a.name.cmp(&b.name));
    lines
}

/// A view: a filter on the load balancers' names, the page, or one load balancer.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub filter: String,
    pub from: usize,
    /// One load balancer's page (`/lb/…`): its name as the page spells it.
    pub lb: Option<String>,
}

/// One view's worth of what the running lbmanager has: what a page shows.
#[derive(Clone, Debug, Default)]
pub struct Board {
    pub version: String,
    /// `--ha`: the instances in the election, the leader first (only the leader serves the
    /// page); none without `--ha`.
    pub ha: Option<Vec<Instance>>,
    /// AWS's throttling buckets as lbmanager paces itself by them, by account and region.
    pub quotas: Vec<QuotaUse>,
    /// The start-up sync is done and the etcd watch is live (`/readyz`).
    pub ready: bool,
    /// Load balancers managed, and of those not in step.
    pub total: usize,
    pub behind: usize,
    /// Load balancers the filter matches.
    pub matching: usize,
    /// The page of those, in name order.
    pub lines: Vec<Line>,
    /// The load balancer of a `/lb/…` view, member by member.
    pub one: Option<One>,
    /// The keys last found to count for nothing, with why, newest last (at most
    /// [`crate::fleet::IGNORED_SHOWN`]).
    pub ignored: Vec<(String, String)>,
}

/// Builds the board of `view` from what the fleet has (`seen`), at `now` (seconds since the Unix
/// epoch). Costs one pass over the load balancers and, for one load balancer's page, its members.
pub fn board<'a>(seen: impl Iterator<Item = Seen<'a>>, view: &View, now: u64) -> Board {
    let filter = view.filter.to_lowercase();
    let mut b = Board::default();
    let mut matching = Vec::new();
    for s in seen {
        let state = State::of(&s);
        b.total += 1;
        b.behind += usize::from(state != State::InStep);
        let name = s.lb.to_string();
        if view.lb.as_deref() == Some(name.as_str()) {
            let desired = BTreeMap::from([(s.lb.clone(), s.wanted.clone())]);
            let published: BTreeMap<LbId, &LbStatus> =
                s.status.map(|st| (s.lb.clone(), st)).into_iter().collect();
            let row = crate::status::table::rows(&desired, &published, now).pop();
            b.one = row.map(|row| One {
                state,
                row,
                members: member_lines(s.lb, s.wanted, s.status),
            });
        }
        if view.lb.is_none() && name.to_lowercase().contains(&filter) {
            matching.push((name, s, state));
        }
    }
    b.matching = matching.len();
    matching.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    b.lines = matching
        .into_iter()
        .skip(view.from)
        .take(PAGE_LBS)
        .map(|(name, s, state)| line(name, &s, state, now))
        .collect();
    b
}

fn line(load_balancer: String, seen: &Seen, state: State, now: u64) -> Line {
    let status = seen.status;
    let mut reasons = Vec::new();
    if let Some(st) = status {
        if let (false, Some(e)) = (st.last_sync.ok, &st.last_sync.error) {
            reasons.push(e.clone());
        }
        for (m, why) in st.rejected.iter().take(REFUSED_NAMED) {
            reasons.push(format!("{m}: {why}"));
        }
        if st.rejected.len() > REFUSED_NAMED {
            reasons.push(format!(
                "and {} more refused",
                st.rejected.len() - REFUSED_NAMED
            ));
        }
        for p in &st.dns_pending {
            reasons.push(format!(
                "change {} PENDING for {}s",
                p.id,
                now.saturating_sub(p.since)
            ));
        }
    }
    Line {
        load_balancer,
        state,
        wanted: seen.wanted.len(),
        in_aws: status.map(|s| s.members.len() + s.members_more),
        health: status.map(|s| health_summary(&s.members)),
        last_change: status.map(|s| {
            (
                now.saturating_sub(s.last_sync.at),
                s.last_sync.cause.clone(),
            )
        }),
        revision: status.map(|s| s.revision),
        reasons,
    }
}

fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/static/style.css";
                script src="/static/live.js" defer {}
            }
            body { (body) }
        }
    }
}

fn title() -> Markup {
    html! { header { h1 { a href="/" { "lbmanager" } } } }
}

/// This instance, and how many load balancers are not in step: the top of every view.
fn summary(board: &Board) -> Markup {
    html! {
        p.instance {
            "version " (board.version) " · "
            @match &board.ha {
                Some(all) if all.len() > 1 => { "leader (--ha) of " (all.len()) " instances" }
                Some(_) => "leader (--ha), no standby",
                None => "single instance",
            }
            " · "
            @if board.ready { "ready" } @else { span.busy { "starting: the start-up sync is under way" } }
        }
        p.summary {
            (board.total) " load balancers, "
            @if board.behind == 0 { span.ok { "all in step" } }
            @else { span.busy { (board.behind) " not in step" } }
        }
    }
}

/// The whole page `/` for `view`.
pub fn overview(board: &Board, view: &View) -> Markup {
    let body = html! {
        (title())
        form method="get" action="/" {
            label for="q" { "Filter by name " }
            input #q type="search" name="q" value=(view.filter) placeholder="webLB, us-east-1, www…";
        }
        main #board { (fragment(board, view)) }
    };
    document("lbmanager", body)
}

/// The part of `/` that changes: the table of load balancers (what `live.js` swaps in).
pub fn fragment(board: &Board, view: &View) -> Markup {
    html! {
        (summary(board))
        div.scroll {
            table {
                thead { tr {
                    th { "load balancer" } th { "state" } th { "wanted" } th { "in AWS" }
                    th { "health" } th { "last change" } th { "in step up to revision" }
                } }
                tbody {
                    @for line in &board.lines { (lb_row(line)) }
                }
            }
        }
        @if board.matching == 0 { p { "No load balancer matches." } }
        nav.pages {
            @if view.from > 0 {
                a href=(page_link(view, view.from.saturating_sub(PAGE_LBS))) { "← previous" }
            }
            @if board.matching > view.from.saturating_add(PAGE_LBS) {
                " " a href=(page_link(view, view.from + PAGE_LBS)) { "next →" }
            }
        }
        @if view.from == 0 { (instances(board)) (quotas(board)) }
        @if !board.ignored.is_empty() && view.from == 0 {
            h2 { "Keys that count for nothing" }
            p.why { "The newest " (board.ignored.len()) ", each warned about once in the log." }
            div.scroll { table {
                thead { tr { th { "key" } th { "why" } } }
                tbody { @for (key, why) in board.ignored.iter().rev() {
                    tr { td.key data-label="key" { (key) } td data-label="why" { (why) } }
                } }
            } }
        }
    }
}

/// The instances of `--ha`, the leader first.
fn instances(board: &Board) -> Markup {
    let Some(all) = &board.ha else {
        return html! {};
    };
    html! {
        h2 { "Instances (--ha)" }
        div.scroll { table {
            thead { tr { th { "instance" } th { "role" } th { "joined at revision" } } }
            tbody { @for i in all {
                tr {
                    td.key data-label="instance" { (i.who) @if i.me { " (this page)" } }
                    td data-label="role" {
                        @if i.leader { span.ok { "leader: acts" } } @else { "standby" }
                    }
                    td.n data-label="joined at revision" { (i.since) }
                }
            } }
        } }
    }
}

/// AWS's throttling buckets: for each scope, the buckets in use (the rest are full).
fn quotas(board: &Board) -> Markup {
    if board.quotas.is_empty() {
        return html! {};
    }
    html! {
        h2 { "AWS quota buckets" }
        p.why { "lbmanager's share of each bucket AWS throttles by; a call waits here for its tokens \
            instead of being throttled by AWS." }
        div.scroll { table {
            thead { tr { th { "scope" } th { "buckets in use" } } }
            tbody { @for q in &board.quotas {
                tr {
                    td data-label="scope" { (q.scope) }
                    td data-label="buckets in use" {
                        @let used: Vec<_> = q.buckets.iter()
                            .filter(|b| b.slowed || b.tokens + 0.5 < b.capacity).collect();
                        @if used.is_empty() { span.ok { "all full: idle" } }
                        @for b in used {
                            p.bucket class=(bucket_class(b)) {
                                (b.name) ": " (b.tokens.floor()) " of " (b.capacity) " left, "
                                (format!("{:.1}", b.refill)) "/s back"
                                @if b.slowed { " (slowed after AWS throttled)" }
                            }
                        }
                    }
                }
            } }
        } }
    }
}

fn bucket_class(b: &crate::aws::quota::BucketUse) -> &'static str {
    if b.slowed || b.tokens < 1.0 {
        "bad"
    } else if b.tokens < b.capacity / 4.0 {
        "busy"
    } else {
        "ok"
    }
}

fn page_link(view: &View, from: usize) -> String {
    let mut url = url_encoded_query(&[("q", &view.filter)]);
    url.push_str(&format!("&from={from}"));
    url
}

/// `?k=v&…`, each value percent-encoded (maud escapes the attribute; this makes it a URL).
fn url_encoded_query(pairs: &[(&str, &str)]) -> String {
    let mut out = String::from("?");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        for b in v.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(b as char)
                }
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    out
}

fn health_summary(members: &[MemberState]) -> String {
    let count = |h: Health| members.iter().filter(|m| m.health() == h).count();
    let parts: Vec<String> = [
        (count(Health::Healthy), "healthy"),
        (count(Health::Other), "not healthy"),
        (count(Health::Draining), "draining"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() {
        "not read".to_string()
    } else {
        parts.join(", ")
    }
}

fn lb_row(line: &Line) -> Markup {
    html! {
        tr {
            td data-label="load balancer" { a href={ "/lb/" (line.load_balancer) } { (line.load_balancer) } }
            td data-label="state" {
                span class=(line.state.class()) { (line.state.word()) }
                @for why in &line.reasons { p.why { (why) } }
            }
            td.n data-label="wanted" { (line.wanted) }
            td.n data-label="in AWS" { @match line.in_aws { Some(n) => (n), None => "–" } }
            td data-label="health" { @if let Some(h) = &line.health { (h) } }
            td data-label="last change" {
                @if let Some((a, cause)) = &line.last_change { (age(*a)) " (" (cause) ")" }
            }
            td.n data-label="revision" { @if let Some(r) = line.revision { (r) } }
        }
    }
}

/// The page of one load balancer (`/lb/KIND/…`): each member as etcd wants it and as AWS has it.
pub fn one(board: &Board) -> Option<Markup> {
    let live = one_fragment(board)?;
    let name = board.one.as_ref()?.row.load_balancer.as_str();
    Some(document(name, html! { (title()) main #board { (live) } }))
}

/// The part of a load balancer's page that changes.
pub fn one_fragment(board: &Board) -> Option<Markup> {
    let One {
        state,
        row,
        members,
    } = board.one.as_ref()?;
    Some(html! {
        (summary(board))
        h2 { (row.load_balancer) }
        p { span class=(state.class()) { (state.word()) } }
        @if let Some(e) = &row.last_error { p.why { "the last sync failed: " (e) } }
        @for p in &row.dns_pending { p.why { "change " (p.change) " PENDING for " (p.age_secs) "s" } }
        div.scroll { table {
            thead { tr { th { "member" } th { "etcd wants it" } th { "in AWS" } th { "health" } } }
            tbody {
                @for m in members {
                    tr {
                        td data-label="member" { (m.name) }
                        td data-label="etcd wants it" { @if m.wanted { "yes" } @else { "no" } }
                        td data-label="in AWS" {
                            @match &m.in_aws {
                                InAws::Yes => "yes",
                                InAws::Foreign => "yes (another tool's)",
                                InAws::No => "no",
                                InAws::NotListed => "not known yet",
                                InAws::Refused(why) => span.bad { "refused: " (why) },
                            }
                        }
                        td data-label="health" { @if let Some(h) = &m.health { (h) } }
                    }
                }
            }
        } }
        @if row.rejected_unlisted > 0 { p.why { "and " (row.rejected_unlisted) " more refused, not listed" } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{LastSync, Rejections};

    /// Load balancers with what etcd wants, and their statuses.
    struct Fleet(Vec<(LbId, BTreeSet<Member>, Option<LbStatus>)>);

    impl Fleet {
        fn board(&self, view: &View) -> Board {
            let seen = self.0.iter().map(|(lb, wanted, status)| Seen {
                lb,
                wanted,
                changed: 5,
                status: status.as_ref(),
            });
            let mut b = board(seen, view, 1_000);
            b.version = "0.1.0".into();
            b.ready = true;
            b
        }
    }

    fn lb(name: &str) -> LbId {
        format!("elb/us-east-1/{name}").parse().unwrap()
    }

    fn members(ids: &[&str]) -> BTreeSet<Member> {
        ids.iter().map(|i| Member::Instance((*i).into())).collect()
    }

    fn status(in_aws: &[&str]) -> LbStatus {
        LbStatus {
            revision: 7,
            in_step: true,
            members: in_aws
                .iter()
                .map(|m| MemberState {
                    member: (*m).into(),
                    state: Some("InService".into()),
                    foreign: false,
                })
                .collect(),
            last_sync: LastSync {
                at: 990,
                ok: true,
                cause: "etcd event".into(),
                error: None,
            },
            ..LbStatus::default()
        }
    }

    fn refusing(in_aws: &[&str], member: &str, why: &str) -> LbStatus {
        let mut rejected = crate::plan::Rejected::new();
        rejected.insert(member.into(), crate::plan::Refusal::Aws(why.into()));
        LbStatus {
            rejected: Rejections::of(&rejected),
            ..status(in_aws)
        }
    }

    /// Whatever etcd or AWS says reaches the page as text: a member, a reason, an error, a key.
    #[test]
    fn values_from_etcd_and_aws_are_text_not_markup() {
        let hostile = "<script>alert(1)</script>";
        let mut st = refusing(&[], hostile, &format!("AWS said {hostile}"));
        st.last_sync.ok = false;
        st.last_sync.error = Some(format!("\"><img src=x onerror=alert(1)> {hostile}"));
        let fleet = Fleet(vec![(lb("webLB"), members(&["i-1"]), Some(st))]);
        let mut overview_board = fleet.board(&View::default());
        overview_board.ignored.push((
            format!("/lbManager/elb/us-east-1/{hostile}/multiple/i-1"),
            "bad".into(),
        ));
        // Another writer's election key says what it likes.
        overview_board.ha = Some(vec![Instance {
            who: hostile.into(),
            since: 3,
            leader: true,
            me: false,
        }]);
        let one_view = View {
            lb: Some("elb/us-east-1/webLB".into()),
            ..View::default()
        };
        let filtered = View {
            filter: hostile.into(),
            ..View::default()
        };
        for page in [
            overview(&overview_board, &View::default()).into_string(),
            one(&fleet.board(&one_view)).unwrap().into_string(),
            overview(&fleet.board(&filtered), &filtered).into_string(),
        ] {
            assert!(!page.contains("<script>alert"), "{page}");
            assert!(!page.contains("<img"), "{page}");
            assert!(page.contains("&lt;script&gt;"), "{page}");
        }
    }

    #[test]
    fn a_load_balancer_says_where_it_stands() {
        let fleet = Fleet(vec![
            (lb("a"), members(&["i-1"]), Some(status(&["i-1"]))),
            (
                lb("b"),
                members(&["i-1", "i-2"]),
                Some(refusing(&["i-1"], "i-2", "InvalidInstance: not running")),
            ),
            (lb("c"), members(&["i-3"]), None),
        ]);
        let b = fleet.board(&View::default());
        assert_eq!((b.total, b.behind), (3, 2));
        let states: Vec<State> = b.lines.iter().map(|l| l.state).collect();
        assert_eq!(states, [State::InStep, State::Refused, State::New]);
        let page = overview(&b, &View::default()).into_string();
        assert!(page.contains("i-2: InvalidInstance: not running"), "{page}");
        assert!(page.contains("2 not in step"), "{page}");
        assert!(page.contains("10s ago (etcd event)"), "{page}");
        let one = one(&fleet.board(&View {
            lb: Some("elb/us-east-1/b".into()),
            ..View::default()
        }))
        .unwrap()
        .into_string();
        assert!(
            one.contains("refused: InvalidInstance: not running"),
            "{one}"
        );
        // Filtered by name.
        let only_a = View {
            filter: "/A".into(),
            ..View::default()
        };
        let b = fleet.board(&only_a);
        assert_eq!(b.lines.len(), 1);
        assert_eq!(b.lines[0].load_balancer, "elb/us-east-1/a");
    }

    /// The leader lists the instances of `--ha`, and the quota buckets in use, on the first page.
    #[test]
    fn the_instances_and_the_buckets_in_use_are_shown() {
        use crate::aws::quota::BucketUse;
        let fleet = Fleet(vec![(lb("a"), members(&["i-1"]), Some(status(&["i-1"])))]);
        let mut b = fleet.board(&View::default());
        let page = overview(&b, &View::default()).into_string();
        assert!(page.contains("single instance"), "{page}");
        assert!(!page.contains("Instances (--ha)") && !page.contains("AWS quota buckets"));
        b.ha = Some(vec![
            Instance {
                who: "pid 1 lease a host one".into(),
                since: 5,
                leader: true,
                me: true,
            },
            Instance {
                who: "pid 2 lease b host two".into(),
                since: 9,
                leader: false,
                me: false,
            },
        ]);
        let bucket = |name, tokens, slowed| BucketUse {
            name,
            tokens,
            capacity: 19.0,
            refill: 3.96,
            slowed,
        };
        b.quotas = vec![
            QuotaUse {
                scope: "Route53 · default credentials".into(),
                buckets: vec![bucket("account", 19.0, false)],
            },
            QuotaUse {
                scope: "Classic ELB us-east-1 · default credentials".into(),
                buckets: vec![
                    bucket("account", 19.0, false),
                    bucket("registration", 2.4, false),
                    bucket("describe", 0.0, true),
                ],
            },
        ];
        let page = fragment(&b, &View::default()).into_string();
        for text in [
            "leader (--ha) of 2 instances",
            "pid 1 lease a host one (this page)",
            "leader: acts",
            "standby",
            "all full: idle",
            "registration: 2 of 19 left, 4.0/s back",
            "describe: 0 of 19 left, 4.0/s back (slowed after AWS throttled)",
        ] {
            assert!(page.contains(text), "{text}: {page}");
        }
        assert!(
            !page.contains("account: 19"),
            "a full bucket is not listed: {page}"
        );
        // Not on the next pages.
        let next = View {
            from: PAGE_LBS,
            ..View::default()
        };
        assert!(!fragment(&b, &next)
            .into_string()
            .contains("Instances (--ha)"));
    }

    /// A status older than the latest change of the keys is not in step, whatever it says.
    #[test]
    fn a_status_behind_the_keys_is_syncing() {
        let mut st = status(&["i-1"]);
        st.revision = 4;
        let fleet = Fleet(vec![(lb("a"), members(&["i-1"]), Some(st))]);
        assert_eq!(fleet.board(&View::default()).lines[0].state, State::Syncing);
    }

    /// A view lists at most PAGE_LBS load balancers, in name order, and links to the next page.
    #[test]
    fn a_view_is_paged() {
        let fleet = Fleet(
            (0..PAGE_LBS + 5)
                .rev()
                .map(|i| {
                    (
                        lb(&format!("lb{i:04}")),
                        members(&["i-1"]),
                        Some(status(&["i-1"])),
                    )
                })
                .collect(),
        );
        let b = fleet.board(&View::default());
        assert_eq!(b.lines.len(), PAGE_LBS);
        assert_eq!(b.lines[0].load_balancer, "elb/us-east-1/lb0000");
        let first = fragment(&b, &View::default()).into_string();
        assert!(first.contains("from=200"));
        let second = View {
            from: PAGE_LBS,
            ..View::default()
        };
        assert_eq!(fleet.board(&second).lines.len(), 5);
    }

    /// A target key without a port names the target AWS reports on the group's port: one line.
    #[test]
    fn a_target_without_a_port_is_the_one_aws_reports() {
        let tg: LbId = "elbv2/us-east-1/web-tg".parse().unwrap();
        let wanted: BTreeSet<Member> = [
            crate::key::parse_target("10.0.0.1").unwrap(),
            crate::key::parse_target("10.0.0.2").unwrap(),
        ]
        .into_iter()
        .map(|t| Member::Target(Box::new(t)))
        .collect();
        let st = status(&["10.0.0.1:80", "10.0.0.9:80"]);
        let lines = member_lines(&tg, &wanted, Some(&st));
        let shown: Vec<(&str, bool, &InAws)> = lines
            .iter()
            .map(|l| (l.name.as_str(), l.wanted, &l.in_aws))
            .collect();
        assert_eq!(
            shown,
            [
                ("10.0.0.1:80", true, &InAws::Yes),
                ("10.0.0.2", true, &InAws::No),
                ("10.0.0.9:80", false, &InAws::Yes),
            ]
        );
        // Never read: not known, rather than "no".
        let unread = member_lines(&tg, &wanted, None);
        assert!(unread.iter().all(|l| l.in_aws == InAws::NotListed));
    }

    #[test]
    fn a_query_is_a_url() {
        assert_eq!(url_encoded_query(&[("q", "a b&c")]), "?q=a%20b%26c");
    }
}
