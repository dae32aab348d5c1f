//! schemathesis (PyPI) against the committed OpenAPI document and a live agent with a real sandbox: no 5xx, no
//! response that breaks the schema or its documented status codes and content types, schema-invalid input
//! refused, and no `/v1` call answered without the token.

mod common;

use std::path::PathBuf;

use common::*;
use fixtures::harness::*;
use understudy::sandbox;
use understudy::source::Replicate;

/// schemathesis's command: `$UNDERSTUDY_TOOLS/venv/bin/st` (installed by `.ci/setup`), else `st` on PATH.
fn schemathesis() -> PathBuf {
    let installed = tools_venv().join("bin/st");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("st")
    }
}

/// How many operations the OpenAPI document at `spec` describes.
fn operations(spec: &str) -> usize {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(spec).expect("read the spec")).expect("spec json");
    let methods = ["get", "put", "post", "delete", "patch", "head", "options"];
    doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| methods.iter().filter(|m| item.get(**m).is_some()).count())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_response_outside_the_schema() {
    let root = TempRoot::new("fuzz");
    let source = sample_source(&root, 500).await;
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    sandbox::create(&opts, &quiet).await.expect("sandbox");
    let state = root.state();
    let agent = Agent::start(&state, &[]).await;
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api/openapi.json");
    let out = std::process::Command::new(schemathesis())
        .args(["run", spec, "--url", &agent.base])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,\
             response_schema_conformance,negative_data_rejection,unsupported_method,ignored_auth",
        ])
        .args([
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "40",
            "--seed",
            "1",
        ])
        .args(["--request-timeout", "30", "--no-color"])
        .current_dir(std::env::temp_dir())
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "run schemathesis ({}): {e}; install it with bash .ci/setup",
                schemathesis().display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log_text()
    );
    println!("{stdout}");
    let operations = operations(spec);
    assert!(
        stdout.contains(&format!("Tested: {operations}")),
        "every one of the {operations} operations is tested: {stdout}"
    );
    drop(agent);
    // The fuzzer may have deleted the sandbox itself (DELETE is an operation like any other).
    match sandbox::delete(&state, &opts.name, None, false).await {
        Ok(_) | Err(sandbox::SandboxError::NotFound { .. }) => {}
        Err(e) => panic!("delete: {e}"),
    }
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
}
