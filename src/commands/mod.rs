//! The commands, each from parsed flags to an exit code: the daemon ([`run`]), its dry run
//! ([`plan`]), and the host's ([`member`], [`status`], [`explain`]), which need etcd access only. `main`
//! parses the flags and calls them; what they share lives in [`reach`] (run and plan) and
//! [`host`] (member and status), and below them in the library.

pub mod explain;
pub mod host;
pub mod member;
pub mod plan;
pub mod reach;
pub mod run;
pub mod status;
