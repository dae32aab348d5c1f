//! The kind of any error the library returns, found in an error's chain (what the command line turns into an
//! exit code). A sink: it names every error type of the library, and no module of the library uses it.

use crate::error::{Classify, ErrorKind, UsageError};

/// The kind of the outermost error in `err`'s chain that the library knows (errors of other crates, such as a
/// context message, are skipped); `Internal` when none is.
pub fn kind_of_chain<'a>(chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>) -> ErrorKind {
    chain.into_iter().find_map(kind_of).unwrap_or(ErrorKind::Internal)
}

macro_rules! classify_any {
    ($err:expr, $($t:ty),+ $(,)?) => {
        $(if let Some(e) = $err.downcast_ref::<$t>() {
            return Some(e.kind());
        })+
    };
}

/// The kind of one error, if it is one of the library's.
pub fn kind_of(err: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    classify_any!(
        err,
        crate::pg::PgError,
        crate::pg::conninfo::ConnInfoError,
        crate::source::names::InvalidName,
        crate::source::PreflightFailed,
        crate::source::setup::SetupSqlError,
        crate::sandbox::SandboxError,
        crate::fork::ForkError,
        crate::recording::RecordingError,
        crate::recording::StreamError,
        crate::dryrun::DryRunError,
        crate::dryrun::config::ConfigError,
        crate::schedule::ScheduleError,
        crate::migrate::PlanError,
        crate::units::UnitError,
        crate::dryrun::RequestError,
        crate::runs::RunError,
        crate::metrics::MetricsError,
        crate::agent::AgentError,
        crate::server::TlsError,
        UsageError,
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outermost_known_error_decides() {
        let err = anyhow::Error::new(UsageError("bad".into())).context("while reading the plan");
        assert_eq!(kind_of_chain(err.chain()), ErrorKind::Invalid);
        let other = anyhow::anyhow!("something else");
        assert_eq!(kind_of_chain(other.chain()), ErrorKind::Internal);
    }
}
