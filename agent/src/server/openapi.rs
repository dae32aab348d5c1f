//! The API's OpenAPI document, generated from the Rust types and handlers; committed as
//! `docs/api/openapi.json` (a test fails when it is stale; `understudy agent openapi` prints it).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{dryruns, health, recordings, sandboxes};

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = doc.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("The token in the agent's --token-file"))
                        .build(),
                ),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Understudy agent API",
        description = "Sandboxes kept current with production by logical replication, and dry-runs of migrations on \
                       their forks under production's replayed writes. Every /v1 call needs the agent's bearer token.",
        license(name = "Apache-2.0"),
    ),
    paths(
        health::healthz,
        health::readyz,
        health::metrics,
        sandboxes::list,
        sandboxes::create,
        sandboxes::show,
        sandboxes::delete,
        sandboxes::update,
        sandboxes::set_source,
        sandboxes::resync,
        recordings::list,
        recordings::take,
        recordings::show,
        recordings::delete,
        dryruns::list,
        dryruns::start,
        dryruns::show,
        dryruns::events,
        dryruns::cancel,
        dryruns::remove,
        dryruns::report,
    ),
    components(schemas(crate::runs::ReportFormat)),
    modifiers(&Bearer),
    tags(
        (name = "sandboxes", description = "Sandboxes of the agent's state directory"),
        (name = "recordings", description = "Windows of a sandbox's write stream kept for dry-runs later"),
        (name = "dryruns", description = "Dry-runs of migrations on forks of a sandbox"),
        (name = "probes", description = "Health, readiness and metrics (no token)"),
    )
)]
struct ApiDoc;

/// The document, as pretty JSON with a final newline.
pub fn document() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api/openapi.json");
        let now = document();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &now).expect("write docs/api/openapi.json");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == now,
            "docs/api/openapi.json is stale: regenerate it with `UPDATE_OPENAPI=1 cargo test -p understudy-agent \
             openapi` (or `understudy agent openapi > docs/api/openapi.json`) and commit it"
        );
    }

    #[test]
    fn every_v1_operation_needs_the_token_and_documents_401() {
        let doc: serde_json::Value = serde_json::from_str(&document()).expect("json");
        let paths = doc["paths"].as_object().expect("paths");
        let mut v1 = 0;
        for (path, ops) in paths.iter().filter(|(p, _)| p.starts_with("/v1/")) {
            for (method, op) in ops.as_object().expect("operations") {
                v1 += 1;
                assert!(op["security"].is_array(), "{method} {path} has no security");
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path} does not document 401"
                );
            }
        }
        assert!(v1 >= 10, "{v1} operations");
    }
}
