//! The HTTP endpoint (`--listen`): `/metrics` (Prometheus text), `/healthz` (alive), `/readyz`
//! (start-up sync done and etcd watch live), and the live status page ([`crate::board`]): `/`,
//! `/lb/KIND/…` (one load balancer), `/status.json` (what `lbmanager status --output json`
//! prints). actix-web runs on the same actix runtime as the actors; the page asks the Supervisor
//! for what it has in hand, so a view makes no etcd read and no AWS call.
//!
//! Read-only: every route answers GET and HEAD only (anything else: 405). It answers wherever `--listen` binds: bind
//! it to loopback or a management network (README, "Metrics and health").

use std::net::SocketAddr;
use std::sync::Arc;

use actix::Recipient;
use actix_web::http::header;
use actix_web::middleware::DefaultHeaders;
use actix_web::{guard, web, App, HttpResponse, HttpServer};
use serde::Deserialize;

use crate::actors::supervisor::{ShowBoard, ShowReport};
use crate::board::{self, Board, View};
use crate::metrics::Metrics;

async fn metrics(m: web::Data<Arc<Metrics>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(m.encode())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok\n")
}

async fn readyz(m: web::Data<Arc<Metrics>>) -> HttpResponse {
    if m.ready() {
        HttpResponse::Ok().body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable().body("not ready: start-up sync or etcd watch pending\n")
    }
}

/// Where the status page gets what it shows.
#[derive(Clone)]
pub struct Page {
    /// The Supervisor: the fleet's wants and statuses.
    pub board: Recipient<ShowBoard>,
    pub report: Recipient<ShowReport>,
    /// `--ha`: the election's instances, kept current by a watch (the page is served by the
    /// leader: standbys serve nothing until they lead).
    pub instances: Option<tokio::sync::watch::Receiver<Vec<crate::ha::Instance>>>,
    /// AWS's quota buckets, each account's.
    pub quotas: crate::aws::roles::Accounts,
}

impl Page {
    async fn board(&self, m: &Metrics, view: View) -> Option<Board> {
        let board = self.board.send(ShowBoard(view)).await.ok()?;
        Some(Board {
            ha: self.instances.as_ref().map(|i| i.borrow().clone()),
            quotas: self.quotas.quota_uses(),
            ready: m.ready(),
            ..board
        })
    }
}

#[derive(Deserialize)]
struct Query {
    #[serde(default)]
    q: String,
    #[serde(default)]
    from: usize,
    /// Only the part that changes (what the page's script asks for each second).
    #[serde(default)]
    fragment: Option<String>,
}

fn html(markup: maud::Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

fn stopping() -> HttpResponse {
    HttpResponse::ServiceUnavailable().body("lbmanager is stopping\n")
}

async fn overview(
    page: web::Data<Page>,
    m: web::Data<Arc<Metrics>>,
    query: web::Query<Query>,
) -> HttpResponse {
    let view = View {
        filter: query.q.clone(),
        from: query.from,
        lb: None,
    };
    let Some(b) = page.board(&m, view.clone()).await else {
        return stopping();
    };
    match query.fragment {
        Some(_) => html(board::fragment(&b, &view)),
        None => html(board::overview(&b, &view)),
    }
}

async fn one(
    page: web::Data<Page>,
    m: web::Data<Arc<Metrics>>,
    lb: web::Path<String>,
    query: web::Query<Query>,
) -> HttpResponse {
    let view = View {
        lb: Some(lb.into_inner()),
        ..View::default()
    };
    let Some(b) = page.board(&m, view).await else {
        return stopping();
    };
    let found = match query.fragment {
        Some(_) => board::one_fragment(&b),
        None => board::one(&b),
    };
    match found {
        Some(markup) => html(markup),
        None => HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("no such load balancer\n"),
    }
}

async fn status_json(page: web::Data<Page>) -> HttpResponse {
    match page.report.send(ShowReport).await {
        Ok(report) => HttpResponse::Ok().json(&report),
        Err(_) => stopping(),
    }
}

/// A route that reads: GET, and HEAD (the same answer without its body, which actix-web leaves
/// out), as monitoring probes and `curl -I` send.
fn read() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// Anything but a read of a known path: the endpoint is read-only.
async fn elsewhere(req: actix_web::HttpRequest) -> HttpResponse {
    use actix_web::http::Method;
    if req.method() == Method::GET || req.method() == Method::HEAD {
        HttpResponse::NotFound().body("not found\n")
    } else {
        HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, "GET, HEAD"))
            .body("read-only: GET and HEAD only\n")
    }
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok().content_type(content_type).body(body)
}

/// Binds `addr` and serves in the background; an address that can't be bound is an error.
pub fn serve(addr: SocketAddr, metrics_state: Arc<Metrics>, page: Page) -> std::io::Result<()> {
    let server = HttpServer::new(move || {
        App::new()
            .wrap(
                DefaultHeaders::new()
                    .add((header::CONTENT_SECURITY_POLICY, board::CSP))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::REFERRER_POLICY, "no-referrer"))
                    .add((header::X_FRAME_OPTIONS, "DENY"))
                    .add((header::CACHE_CONTROL, "no-store")),
            )
            .app_data(web::Data::new(metrics_state.clone()))
            .app_data(web::Data::new(page.clone()))
            .route("/metrics", read().to(metrics))
            .route("/healthz", read().to(healthz))
            .route("/readyz", read().to(readyz))
            .route("/", read().to(overview))
            .route("/lb/{lb:.+}", read().to(one))
            .route("/status.json", read().to(status_json))
            .route(
                "/static/live.js",
                read().to(|| async { asset("text/javascript; charset=utf-8", board::LIVE_JS) }),
            )
            .route(
                "/static/style.css",
                read().to(|| async { asset("text/css; charset=utf-8", board::STYLE_CSS) }),
            )
            .default_service(web::to(elsewhere))
    })
    .workers(1)
    .disable_signals()
    .bind(addr)?
    .run();
    actix_rt::spawn(server);
    Ok(())
}
