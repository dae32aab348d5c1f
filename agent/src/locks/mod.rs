//! Locks on a fork, seen from both sides: a sampler polls `pg_locks` joined with `pg_stat_activity` and
//! `pg_blocking_pids` every few milliseconds (default 20 ms), and the analysis turns samples into what the
//! migration held (mode × relation, when granted, how long), how long it waited and behind whom, who waited behind
//! it, and the longest lock queue.

pub mod analysis;
pub mod sampler;

pub use analysis::{BlockEpisode, HeldLock, LockReport, MigrationWait, analyse};
pub use sampler::{LockSample, Sampler};
