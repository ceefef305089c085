//! The root logger: slog-term, colourful on a terminal and plain otherwise, to stderr.

use std::io::IsTerminal;
use std::sync::Mutex;

use slog::{Drain, Level, Logger};

pub fn logger(level: Level) -> Logger {
    if std::io::stderr().is_terminal() {
        let decorator = slog_term::TermDecorator::new().stderr().build();
        let drain = Mutex::new(slog_term::FullFormat::new(decorator).build()).fuse();
        Logger::root(slog::LevelFilter::new(drain, level).fuse(), slog::o!())
    } else {
        let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
        let drain = slog_term::FullFormat::new(decorator).build().fuse();
        Logger::root(slog::LevelFilter::new(drain, level).fuse(), slog::o!())
    }
}
