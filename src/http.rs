//! The HTTP endpoint (`--listen`): `/metrics` (Prometheus text), `/healthz` (alive) and `/readyz`
//! (start-up sync done and etcd watch live). actix-web runs on the same actix runtime as the
//! actors.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};

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

/// Binds `addr` and serves in the background; an address that can't be bound is an error.
pub fn serve(addr: SocketAddr, metrics_state: Arc<Metrics>) -> std::io::Result<()> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(metrics_state.clone()))
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    .workers(1)
    .disable_signals()
    .bind(addr)?
    .run();
    actix_rt::spawn(server);
    Ok(())
}
