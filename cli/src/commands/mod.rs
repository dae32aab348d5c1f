//! One module per command: its flags, and how its result is printed.

pub mod agent;
pub mod demo;
pub mod dryrun;
pub mod fork;
pub mod lint;
pub mod recording;
pub mod sandbox;
pub mod schedule;
pub mod source;
pub mod sweep;
