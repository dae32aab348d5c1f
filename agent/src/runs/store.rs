//! Runs on disk: `<state>/runs/<id>/run.json` (the view, with its events) and the reports of a finished run.

use std::path::PathBuf;

use super::RunView;
use crate::dryrun::RunPhase;
use crate::report::DryRunReport;
use crate::sandbox::StateDir;

/// A report's rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReportFormat {
    Json,
    Markdown,
    Text,
}

impl ReportFormat {
    fn file(self) -> &'static str {
        match self {
            ReportFormat::Json => "report.json",
            ReportFormat::Markdown => "report.md",
            ReportFormat::Text => "report.txt",
        }
    }
}

fn dir(state: &StateDir, id: &str) -> PathBuf {
    state.root().join("runs").join(id)
}

fn write(path: PathBuf, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

pub(super) fn save_view(state: &StateDir, view: &RunView) -> std::io::Result<()> {
    let d = dir(state, &view.id);
    std::fs::create_dir_all(&d)?;
    let text = serde_json::to_string_pretty(view).map_err(std::io::Error::other)?;
    write(d.join("run.json"), &text)
}

pub(super) fn save_report(state: &StateDir, id: &str, report: &DryRunReport) -> std::io::Result<()> {
    let d = dir(state, id);
    std::fs::create_dir_all(&d)?;
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    write(d.join(ReportFormat::Json.file()), &(json + "\n"))?;
    write(d.join(ReportFormat::Markdown.file()), &report.markdown())?;
    write(d.join(ReportFormat::Text.file()), &report.text())
}

pub(super) fn read_report(state: &StateDir, id: &str, format: ReportFormat) -> std::io::Result<String> {
    std::fs::read_to_string(dir(state, id).join(format.file()))
}

pub(super) fn remove(state: &StateDir, id: &str) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir(state, id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The runs kept on disk; one that had not ended was interrupted by the agent's stop, and is marked failed.
pub(super) fn load_all(state: &StateDir) -> Vec<RunView> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(state.root().join("runs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path().join("run.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(mut view) = serde_json::from_str::<RunView>(&text) else {
            continue;
        };
        if !view.phase.is_final() {
            let was = view.phase;
            view.phase = RunPhase::Failed;
            view.finished_at = Some(jiff::Timestamp::now());
            view.error = Some(super::view::RunFailure {
                kind: crate::error::ErrorKind::Internal,
                message: format!("the agent stopped while this run was {was:?}; its forks were swept"),
            });
            let _ = save_view(state, &view);
        }
        out.push(view);
    }
    out
}
