//! Verification: comparing a migrated fork with its control twin (schema, data, user checks), the data-dependent
//! pre-flight, and the rollback proof.

pub mod checks;
pub mod checksum;
pub mod data;
pub mod orphans;
pub mod preflight;
pub mod schema;
pub mod twins;
