//! The source (production) side. Everything Understudy does there is here, and it is only: reads of the catalog
//! and of the published tables, one publication (only when asked to create it), one logical replication slot,
//! and their removal. Nothing here writes to a table of the source.

pub mod catalog;
pub mod identity;
pub mod names;
pub mod objects;
pub mod preflight;
pub mod problem;
pub mod setup;
pub mod subset;
pub mod sweep;

pub use catalog::PublishedTable;
pub use names::SandboxName;
pub use preflight::{Preflight, PreflightFailed, Problem, Replicate};
pub use subset::{Subset, SubsetState, TableFilter};
