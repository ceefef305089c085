//! Benchmark scenarios A–E, R, M, P, S and Z of BENCHMARKS.md, against a real etcd and moto, for lbmanager and, in
//! the same run, for a naive baseline that makes one AWS call per etcd event (as the Go original
//! and an `etcdctl watch | aws` loop do).
//!
//! Run: `cargo bench --bench scenarios` (needs etcd and moto: `scripts/install-deps.sh`).
//! One scenario: `cargo bench --bench scenarios -- A` (A, B1, B2, C, D, E, R, M, P, S, Z).
//! It prints a Markdown table; timings are measurements, never assertions.
//! One module a scenario; `common` holds what they share.

mod a;
mod b;
mod c;
mod common;
mod d;
mod e;
mod p;
mod s;
mod scale;
mod z;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let which = args.first().cloned().unwrap_or_else(|| "all".into());
    let idle = Duration::from_secs(
        std::env::var("BENCH_IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let rows = local.block_on(&rt, async move {
        let mut rows = Vec::new();
        let run = |s: &str| which == "all" || which == s;
        if run("A") {
            a::scenario_a(&mut rows).await;
        }
        if run("B1") || run("B2") || which == "B" {
            b::scenario_b(&mut rows, if which == "B" { "all" } else { &which }).await;
        }
        if run("C") {
            c::scenario_c(&mut rows).await;
        }
        if run("D") {
            d::scenario_d(&mut rows).await;
        }
        if run("E") {
            e::scenario_e(&mut rows, idle).await;
        }
        if run("R") {
            scale::scenario_r(&mut rows).await;
        }
        if run("M") {
            scale::scenario_m(&mut rows).await;
        }
        if run("P") {
            p::scenario_p(&mut rows).await;
        }
        if run("S") {
            s::scenario_s(&mut rows).await;
        }
        if run("Z") {
            z::scenario_z(&mut rows).await;
        }
        rows
    });
    println!("| scenario | tool | AWS calls | time | notes |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.scenario, r.tool, r.calls, r.time, r.notes
        );
    }
}
