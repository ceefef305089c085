//! The root logger, to stderr: slog-term for people (colourful on a terminal, plain otherwise), or
//! one JSON object a line for log shippers (`--log-format json`). Both go through [`Escaping`], so
//! a value from etcd or AWS never starts a line of its own, reaches a terminal as a control
//! sequence or reorders what a reader sees (JSON would escape control characters, not the
//! characters that reorder text).

use std::io::IsTerminal;
use std::sync::Mutex;

use slog::{Drain, Level, Logger};

use crate::escape::Escaping;

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for Level {
    fn from(level: LogLevel) -> Level {
        match level {
            LogLevel::Error => Level::Error,
            LogLevel::Warn => Level::Warning,
            LogLevel::Info => Level::Info,
            LogLevel::Debug => Level::Debug,
            LogLevel::Trace => Level::Trace,
        }
    }
}

pub fn logger(level: Level, format: LogFormat) -> Logger {
    match format {
        LogFormat::Json => {
            let drain = slog_json::Json::new(std::io::stderr())
                .add_default_keys()
                .build();
            let drain = Mutex::new(Escaping(drain)).fuse();
            Logger::root(slog::LevelFilter::new(drain, level).fuse(), slog::o!())
        }
        LogFormat::Text if std::io::stderr().is_terminal() => {
            let decorator = slog_term::TermDecorator::new().stderr().build();
            let drain = Mutex::new(Escaping(slog_term::FullFormat::new(decorator).build())).fuse();
            Logger::root(slog::LevelFilter::new(drain, level).fuse(), slog::o!())
        }
        LogFormat::Text => {
            let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
            let drain = Escaping(slog_term::FullFormat::new(decorator).build()).fuse();
            Logger::root(slog::LevelFilter::new(drain, level).fuse(), slog::o!())
        }
    }
}
