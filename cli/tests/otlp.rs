//! A build with the `otlp` feature exports a dry-run's trace over OTLP/HTTP (protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set: a receiver on a loopback port gets the run's spans, a root `dryrun` with
//! one child per phase, under the trace id that the report prints, from the service `understudy`.

mod common;

use std::time::Duration;

use fixtures::harness::*;
use fixtures::otlp::Receiver;
use understudy::sandbox;
use understudy::source::Replicate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_is_exported_over_otlp_when_an_endpoint_is_set() {
    let root = TempRoot::new("otlp");
    let source = sample_source(&root, 1_000).await;
    let create = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    sandbox::create(&create, &quiet).await.expect("sandbox");
    let up = root.path().join("up.sql");
    let down = root.path().join("down.sql");
    std::fs::write(&up, "ALTER TABLE orders ADD COLUMN channel text;").expect("up");
    std::fs::write(&down, "ALTER TABLE orders DROP COLUMN channel;").expect("down");
    let receiver = Receiver::start().await.expect("receiver");

    let state = root.state();
    let out = tokio::process::Command::from(common::cli(&state))
        .args(["dry-run", "--sandbox", "shop", "--warmup", "1s", "--after", "500ms"])
        .arg("--up")
        .arg(&up)
        .arg("--down")
        .arg(&down)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .expect("the dry-run ends")
        .expect("run understudy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("trace "))
        .unwrap_or_else(|| panic!("the report prints its trace id: {stdout}"))
        .trim()
        .to_string();

    // The exporter flushes when the command exits.
    let (requests, refused) = receiver.requests();
    assert!(requests > 0, "no OTLP request reached {}", receiver.endpoint);
    assert!(
        refused.is_empty(),
        "requests that are not OTLP/HTTP protobuf: {refused:?}"
    );
    let spans: Vec<_> = receiver.spans().into_iter().filter(|s| s.trace_id == trace).collect();
    let run: Vec<_> = spans.iter().filter(|s| s.name == "dryrun").collect();
    assert_eq!(run.len(), 1, "one dryrun span in trace {trace}: {spans:?}");
    assert_eq!(run[0].service, "understudy");
    assert_eq!(run[0].parent_span_id, "", "the command line's run starts its trace");
    for phase in ["fork", "replay", "migrate", "verify", "rollback"] {
        let of: Vec<_> = spans.iter().filter(|s| s.name == phase).collect();
        assert_eq!(of.len(), 1, "one {phase} span in trace {trace}: {spans:?}");
        assert_eq!(of[0].parent_span_id, run[0].span_id, "{phase} is a child of the run");
    }
}
