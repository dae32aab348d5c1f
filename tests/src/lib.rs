//! Test support and demo content, kept out of the shipped library: an embedded "production" with production's
//! shapes ([`source`]), a steady application writer ([`writer`]), the curated migrations of the demo
//! ([`migrations`]), `understudy demo` itself ([`demo`]) and the harness the tests share ([`harness`]).

pub mod demo;
pub mod harness;
pub mod kube;
pub mod migrations;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod proxy;
pub mod source;
pub mod tenants;
pub mod writer;

pub use demo::{DemoOptions, run as demo};
