//! Understudy's agent: everything that touches PostgreSQL. The `understudy` command line and (later) the
//! Kubernetes pods call into this library; see `docs/architecture.md` for the module map.

pub mod cow;
pub mod demo;
pub mod dryrun;
pub mod fork;
pub mod lint;
pub mod locks;
pub mod lsn;
pub mod migrate;
pub mod pg;
pub mod pgoutput;
pub mod progress;
pub mod replay;
pub mod sandbox;
pub mod schedule;
pub mod source;
pub mod verify;

pub use lsn::Lsn;
