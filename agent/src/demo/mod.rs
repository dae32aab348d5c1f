//! `understudy demo` and the pieces it shares with the tests and the benchmark: an embedded "production" with
//! production-shaped data ([`source`]) and a steady application writer ([`writer`]).

pub mod migrations;
pub mod run;
pub mod source;
pub mod writer;

pub use run::{DemoOptions, run};
