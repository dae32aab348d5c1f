//! Understudy's agent: everything that touches PostgreSQL. The `understudy` command line and (later) the
//! Kubernetes pods call into this library; see `docs/architecture.md` for the module map.

pub mod agent;
pub mod classify;
pub mod cow;
pub mod dryrun;
pub mod error;
pub mod fork;
pub mod lint;
pub mod locks;
pub mod lsn;
pub mod mask;
pub mod metrics;
pub mod migrate;
pub mod pg;
pub mod pgoutput;
pub mod progress;
pub mod recording;
pub mod replay;
pub mod report;
pub mod runs;
pub mod sandbox;
pub mod schedule;
pub mod server;
pub mod source;
pub mod supervisor;
pub mod telemetry;
pub mod units;
pub mod verify;

pub use error::{Classify, ErrorKind};
pub use lsn::Lsn;
