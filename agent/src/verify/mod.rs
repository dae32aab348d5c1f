//! Verification: comparing the content of tables across servers.

pub mod checksum;
