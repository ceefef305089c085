//! The live status page on `--listen` (`/`, one page per load balancer, `/status.json`): what
//! `lbmanager status` shows, from what the running lbmanager already has in hand (the fleet's
//! desired state and each load balancer's last published status), so that a view costs no etcd
//! read and no AWS call. Pure: a [`Board`] in, HTML out.
//!
//! The HTML comes from maud's templates, which escape every value they are given: a key, an AWS
//! message or a member reaches the page as text, never as markup. The page's only script is
//! served from the binary (`live.js`, under a Content-Security-Policy that allows no other): it
//! fetches the same view's [`fragment`] every second and puts it in place, so the page stays
//! current without a reload and without a CDN or a build step.

use maud::{html, Markup, DOCTYPE};
use serde::Serialize;

use crate::status::table::{StatusReport, StatusRow};
use crate::status::{Health, MemberState};

/// The script that keeps a page current (see the module's doc).
pub const LIVE_JS: &str = include_str!("board/live.js");
/// The page's style: small, and readable on a phone.
pub const STYLE_CSS: &str = include_str!("board/style.css");
/// The page's policy: its own script and style only, nothing inline, no frames, no forms
/// elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";
/// Load balancers a page lists (the rest on the next pages): a first view stays small at any
/// scale, as members are listed on each load balancer's own page only.
pub const PAGE_LBS: usize = 200;

/// What the page shows: the report of `lbmanager status` (`/status.json`), and this instance.
#[derive(Clone, Debug, Serialize)]
pub struct Board {
    #[serde(flatten)]
    pub report: StatusReport,
    /// `--ha`: whether this instance leads (only the leader acts); none without `--ha`.
    #[serde(skip)]
    pub leading: Option<bool>,
    /// The start-up sync is done and the etcd watch is live (`/readyz`).
    #[serde(skip)]
    pub ready: bool,
    /// The keys last found to count for nothing, with why, newest last (at most
    /// [`crate::fleet::IGNORED_SHOWN`]).
    #[serde(skip)]
    pub ignored: Vec<(String, String)>,
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
    pub fn of(row: &StatusRow) -> State {
        if row.last_error.is_some() {
            State::Error
        } else if !row.rejected.is_empty() || row.rejected_unlisted > 0 {
            State::Refused
        } else if row.in_aws.is_none() {
            State::New
        } else if !row.in_step {
            State::Syncing
        } else if !row.dns_pending.is_empty() {
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

/// A view of the board: a filter on the load balancers' names and the page.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub filter: String,
    pub from: usize,
}

impl View {
    fn rows<'a>(&self, board: &'a Board) -> impl Iterator<Item = &'a StatusRow> + 'a {
        let filter = self.filter.to_lowercase();
        board
            .report
            .load_balancers
            .iter()
            .filter(move |r| r.load_balancer.to_lowercase().contains(&filter))
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
    let rows = &board.report.load_balancers;
    let behind = rows
        .iter()
        .filter(|r| State::of(r) != State::InStep)
        .count();
    let version = board
        .report
        .daemon
        .as_ref()
        .map_or("", |d| d.version.as_str());
    html! {
        p.instance {
            "version " (version) " · "
            @match board.leading {
                Some(true) => "leader (--ha)",
                Some(false) => "standby (--ha): the leader acts",
                None => "single instance",
            }
            " · "
            @if board.ready { "ready" } @else { span.busy { "starting: the start-up sync is under way" } }
        }
        p.summary {
            (rows.len()) " load balancers, "
            @if behind == 0 { span.ok { "all in step" } }
            @else { span.busy { (behind) " not in step" } }
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
    let matching: Vec<&StatusRow> = view.rows(board).collect();
    let page = matching.iter().skip(view.from).take(PAGE_LBS);
    html! {
        (summary(board))
        div.scroll {
            table {
                thead { tr {
                    th { "load balancer" } th { "state" } th { "wanted" } th { "in AWS" }
                    th { "health" } th { "last change" } th { "in step up to revision" }
                } }
                tbody {
                    @for row in page { (lb_row(row)) }
                }
            }
        }
        @if matching.is_empty() { p { "No load balancer matches." } }
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
        nav.pages {
            @if view.from > 0 {
                a href=(page_link(view, view.from.saturating_sub(PAGE_LBS))) { "← previous" }
            }
            @if matching.len() > view.from + PAGE_LBS {
                " " a href=(page_link(view, view.from + PAGE_LBS)) { "next →" }
            }
        }
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
    let (ok, other, draining) = (
        count(Health::Healthy),
        count(Health::Other),
        count(Health::Draining),
    );
    let mut parts = Vec::new();
    if ok > 0 {
        parts.push(format!("{ok} healthy"));
    }
    if other > 0 {
        parts.push(format!("{other} not healthy"));
    }
    if draining > 0 {
        parts.push(format!("{draining} draining"));
    }
    if parts.is_empty() {
        "not read".to_string()
    } else {
        parts.join(", ")
    }
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s => format!("{}h ago", s / 3600),
    }
}

fn lb_row(row: &StatusRow) -> Markup {
    let state = State::of(row);
    html! {
        tr {
            td data-label="load balancer" { a href={ "/lb/" (row.load_balancer) } { (row.load_balancer) } }
            td data-label="state" { span class=(state.class()) { (state.word()) } (reasons(row)) }
            td.n data-label="wanted" { (row.desired.len()) }
            td.n data-label="in AWS" { @match &row.in_aws { Some(m) => (m.len()), None => "–" } }
            td data-label="health" { @if let Some(m) = &row.in_aws { (health_summary(m)) } }
            td data-label="last change" {
                @if let Some(a) = row.last_change_age { (age(a)) }
                @if let Some(c) = &row.last_change_cause { " (" (c) ")" }
            }
            td.n data-label="revision" { @if let Some(r) = row.revision { (r) } }
        }
    }
}

/// Why a load balancer is not in step, in AWS's words.
fn reasons(row: &StatusRow) -> Markup {
    html! {
        @if let Some(e) = &row.last_error { p.why { (e) } }
        @for (member, why) in &row.rejected { p.why { (member) ": " (why) } }
        @if row.rejected_unlisted > 0 { p.why { "and " (row.rejected_unlisted) " more refused" } }
        @for p in &row.dns_pending { p.why { "change " (p.change) " PENDING for " (p.age_secs) "s" } }
    }
}

/// The page of one load balancer (`/lb/KIND/…`): each member as etcd wants it and as AWS has it.
pub fn one(board: &Board, lb: &str) -> Option<Markup> {
    let live = one_fragment(board, lb)?;
    Some(document(lb, html! { (title()) main #board { (live) } }))
}

/// The part of a load balancer's page that changes.
pub fn one_fragment(board: &Board, lb: &str) -> Option<Markup> {
    let row = board
        .report
        .load_balancers
        .iter()
        .find(|r| r.load_balancer == lb)?;
    let state = State::of(row);
    let in_aws = row.in_aws.as_deref().unwrap_or_default();
    let mut members: Vec<&str> = row.desired.iter().map(String::as_str).collect();
    for m in in_aws {
        if !members.contains(&m.member.as_str()) {
            members.push(&m.member);
        }
    }
    members.sort_unstable();
    Some(html! {
        (summary(board))
        h2 { (row.load_balancer) }
        p { span class=(state.class()) { (state.word()) } (reasons(row)) }
        div.scroll { table {
            thead { tr { th { "member" } th { "etcd wants it" } th { "in AWS" } th { "health" } } }
            tbody {
                @for m in &members {
                    @let aws = in_aws.iter().find(|s| s.member == *m);
                    tr {
                        td data-label="member" { (m) }
                        td data-label="etcd wants it" { @if row.desired.iter().any(|d| d == m) { "yes" } @else { "no" } }
                        td data-label="in AWS" {
                            @match aws {
                                Some(s) if s.foreign => "yes (another tool's)",
                                Some(_) => "yes",
                                None => @if let Some(why) = row.rejected.get(*m) { span.bad { "refused: " (why) } } @else { "no" },
                            }
                        }
                        td data-label="health" { @if let Some(s) = aws.and_then(|s| s.state.as_deref()) { (s) } }
                    }
                }
            }
        } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::table::DaemonSeen;
    use std::collections::BTreeMap;

    fn row(lb: &str, desired: &[&str], in_aws: &[&str]) -> StatusRow {
        StatusRow {
            load_balancer: lb.into(),
            desired: desired.iter().map(|s| s.to_string()).collect(),
            in_aws: Some(
                in_aws
                    .iter()
                    .map(|m| MemberState {
                        member: m.to_string(),
                        state: Some("InService".into()),
                        foreign: false,
                    })
                    .collect(),
            ),
            in_step: desired == in_aws,
            last_change_age: Some(5),
            last_change_cause: Some("etcd event".into()),
            revision: Some(42),
            last_error: None,
            rejected: BTreeMap::new(),
            rejected_unlisted: 0,
            dns_pending: Vec::new(),
        }
    }

    fn board(rows: Vec<StatusRow>) -> Board {
        Board {
            report: StatusReport {
                daemon: Some(DaemonSeen {
                    version: "0.1.0".into(),
                    reported_secs_ago: 0,
                    resync_interval_secs: 300,
                    stale: false,
                }),
                load_balancers: rows,
            },
            leading: None,
            ready: true,
            ignored: Vec::new(),
        }
    }

    /// Whatever etcd or AWS says reaches the page as text: a member, a reason, an error.
    #[test]
    fn values_from_etcd_and_aws_are_text_not_markup() {
        let hostile = "<script>alert(1)</script>";
        let mut r = row("elb/us-east-1/webLB", &[hostile], &[]);
        r.rejected
            .insert(hostile.into(), format!("AWS said {hostile}"));
        r.last_error = Some(format!("\"><img src=x onerror=alert(1)> {hostile}"));
        let b = board(vec![r]);
        for page in [
            overview(&b, &View::default()).into_string(),
            one(&b, "elb/us-east-1/webLB").unwrap().into_string(),
            overview(
                &b,
                &View {
                    filter: hostile.into(),
                    from: 0,
                },
            )
            .into_string(),
        ] {
            assert!(!page.contains("<script>alert"), "{page}");
            assert!(!page.contains("<img"), "{page}");
            assert!(page.contains("&lt;script&gt;"), "{page}");
        }
    }

    /// A key that counts for nothing is listed with why, as text whatever it holds.
    #[test]
    fn ignored_keys_are_listed_as_text() {
        let mut b = board(Vec::new());
        let key = "/lbManager/elb/us-east-1/<script>alert(1)</script>/multiple/i-1";
        b.ignored.push((key.into(), "malformed: bad name".into()));
        let page = overview(&b, &View::default()).into_string();
        assert!(page.contains("/lbManager/elb/us-east-1/&lt;script&gt;alert(1)&lt;/script&gt;/"));
        assert!(!page.contains("<script>alert"));
    }

    #[test]
    fn a_load_balancer_says_where_it_stands() {
        let mut refused = row("elb/us-east-1/b", &["i-1", "i-2"], &["i-1"]);
        refused
            .rejected
            .insert("i-2".into(), "InvalidInstance: not running".into());
        let b = board(vec![row("elb/us-east-1/a", &["i-1"], &["i-1"]), refused]);
        let page = overview(&b, &View::default()).into_string();
        assert!(page.contains("in step"));
        assert!(page.contains("refused members"));
        assert!(page.contains("i-2: InvalidInstance: not running"));
        assert!(page.contains("1 not in step"));
        let one = one(&b, "elb/us-east-1/b").unwrap().into_string();
        assert!(
            one.contains("refused: InvalidInstance: not running"),
            "{one}"
        );
        // Filtered by name.
        let only_a = fragment(
            &b,
            &View {
                filter: "/A".into(),
                from: 0,
            },
        )
        .into_string();
        assert!(only_a.contains("elb/us-east-1/a") && !only_a.contains("elb/us-east-1/b"));
    }

    /// A first view lists at most PAGE_LBS load balancers, and links to the next page.
    #[test]
    fn a_view_is_paged() {
        let rows = (0..PAGE_LBS + 5)
            .map(|i| row(&format!("elb/us-east-1/lb{i:04}"), &["i-1"], &["i-1"]))
            .collect();
        let b = board(rows);
        let first = fragment(&b, &View::default()).into_string();
        assert_eq!(first.matches("<tr>").count(), PAGE_LBS + 1);
        assert!(first.contains("from=200"));
        let second = fragment(
            &b,
            &View {
                filter: String::new(),
                from: PAGE_LBS,
            },
        )
        .into_string();
        assert_eq!(second.matches("<tr>").count(), 5 + 1);
    }

    #[test]
    fn a_query_is_a_url() {
        assert_eq!(url_encoded_query(&[("q", "a b&c")]), "?q=a%20b%26c");
    }
}
