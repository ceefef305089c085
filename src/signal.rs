//! What stops a command that runs until told to: SIGTERM or SIGINT, shared by `run` and the
//! host's commands that wait (`member … --wait`, `--lease-ttl`).

use futures::future::{BoxFuture, FutureExt, Shared};

/// What stops `run`: resolves with the name of what asked (`SIGTERM`), and can be awaited more
/// than once (while waiting for the leadership, then while running).
pub type StopSignal = Shared<BoxFuture<'static, &'static str>>;

/// SIGTERM or SIGINT. Installs the handlers at once, so a signal that comes early is not lost.
pub fn on_signals() -> StopSignal {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
    .boxed()
    .shared()
}
