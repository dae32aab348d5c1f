//! A run as the API shows it: its phase and events, and once finished its verdict, the one-line summary, the key
//! figures and the top findings (what the operator copies into a DryRun's status).

use serde::{Deserialize, Serialize};

use super::figures::{KeyFigures, figures};
use crate::dryrun::{DryRunError, DryRunOptions, RunPhase};
use crate::error::{Classify, ErrorKind};
use crate::report::{DryRunReport, FindingCode, Severity, Verdict};

/// One thing that happened in a run: a phase change (no message) or a progress line.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunEvent {
    pub at: jiff::Timestamp,
    pub phase: RunPhase,
    pub message: Option<String>,
}

/// A finding in a run's summary.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopFinding {
    pub code: FindingCode,
    pub severity: Severity,
    pub title: String,
    pub line: Option<usize>,
}

/// An error that ended a run.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunFailure {
    pub kind: ErrorKind,
    pub message: String,
}

/// A dry-run of the agent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunView {
    pub id: String,
    pub sandbox: String,
    /// The migration's name (its file).
    pub migration: String,
    pub phase: RunPhase,
    pub created_at: jiff::Timestamp,
    /// When a scheduled run will start.
    pub scheduled_for: Option<jiff::Timestamp>,
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: Option<jiff::Timestamp>,
    /// The migrated fork's name (the control twin's ends in `-ctl`).
    pub fork: String,
    pub verdict: Option<Verdict>,
    /// One line: the verdict and its first reasons.
    pub summary: Option<String>,
    pub figures: Option<KeyFigures>,
    /// The findings that are not informational, worst first (at most 10).
    pub findings: Vec<TopFinding>,
    /// Why the run ended without a report.
    pub error: Option<RunFailure>,
    /// The run's OpenTelemetry trace, once it started (an agent built with the `otlp` feature, exporting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub trace_id: Option<crate::telemetry::TraceId>,
    /// Phase changes and progress lines, oldest first (only in `GET /v1/dryruns/{id}`).
    #[serde(default)]
    pub events: Vec<RunEvent>,
}

impl RunView {
    pub(super) fn accepted(
        id: &str,
        opts: &DryRunOptions,
        now: jiff::Timestamp,
        scheduled_for: Option<jiff::Timestamp>,
    ) -> Self {
        RunView {
            id: id.to_string(),
            sandbox: opts.sandbox.to_string(),
            migration: opts.up.name.clone(),
            phase: RunPhase::Pending,
            created_at: now,
            scheduled_for,
            started_at: None,
            finished_at: None,
            fork: opts.fork_name.to_string(),
            verdict: None,
            summary: None,
            figures: None,
            findings: Vec::new(),
            error: None,
            trace_id: None,
            events: Vec::new(),
        }
    }

    pub(super) fn succeeded(&mut self, report: &DryRunReport) {
        self.verdict = Some(report.verdict.result);
        let reasons: Vec<&str> = report.verdict.reasons.iter().take(2).map(String::as_str).collect();
        self.summary = Some(format!("{}: {}", report.verdict.result.as_str(), reasons.join("; ")));
        self.figures = Some(figures(report));
        let mut notable: Vec<TopFinding> = report
            .findings
            .iter()
            .filter(|f| f.severity != Severity::Info)
            .map(|f| TopFinding {
                code: f.code.clone(),
                severity: f.severity,
                title: f.title.clone(),
                line: f.line,
            })
            .collect();
        notable.sort_by_key(|f| std::cmp::Reverse(f.severity));
        notable.truncate(10);
        self.findings = notable;
    }

    pub(super) fn failed(&mut self, e: &DryRunError) {
        self.error = Some(RunFailure {
            kind: e.kind(),
            message: e.to_string(),
        });
    }
}
