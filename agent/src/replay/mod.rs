//! Replay: reading the write stream captured on a sandbox (a capture slot) and applying it to a fork through
//! ordinary client sessions, as the application's writes would arrive.

pub mod apply;
pub mod capture;
mod dispatch;
pub mod live;
mod record;
mod recorded;
mod session;
pub mod statement;
pub mod stream;
pub use recorded::{Speed, SpeedError};

pub use apply::{Applier, ApplyError};
pub use capture::{CaptureReader, Change, Transaction};
