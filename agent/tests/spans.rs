//! A dry-run is one trace: a `dryrun` span with a child per phase (fork, replay, migrate, verify, rollback), whose
//! trace id is in the report; started through the agent's runs with a caller's `traceparent`, the run joins the
//! caller's trace and shows its id. Spans go to OpenTelemetry's in-memory exporter (the `otel` feature).

use std::sync::Arc;
use std::time::Duration;

use fixtures::harness::*;
use fixtures::writer::Writer;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt as _;
use understudy::dryrun::{DryRunOptions, DryRunRequest, RunPhase, SqlText};
use understudy::report::Thresholds;
use understudy::runs::Runs;
use understudy::sandbox;
use understudy::source::{Replicate, SandboxName};

const UP: &str = "ALTER TABLE orders ADD COLUMN channel text DEFAULT 'web';";
const DOWN: &str = "ALTER TABLE orders DROP COLUMN channel;";
const PHASES: [&str; 5] = ["fork", "replay", "migrate", "verify", "rollback"];

/// The migration and its down-migration, with short windows.
fn request() -> DryRunRequest {
    let mut request = DryRunRequest::new(
        "shop",
        SqlText {
            name: Some("add_channel.sql".into()),
            sql: UP.into(),
        },
    );
    request.down = Some(SqlText {
        name: Some("add_channel.down.sql".into()),
        sql: DOWN.into(),
    });
    request.warmup = Some(understudy::units::Duration::from_millis(800));
    request.after = Some(understudy::units::Duration::from_millis(500));
    request.workers = Some(2);
    request
}

fn options(fork: &str) -> DryRunOptions {
    let (mut opts, _) = request().validate(&Thresholds::default()).expect("valid request");
    opts.fork_name = SandboxName::parse(fork).expect("name");
    opts
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [SpanData], name: &str, trace: TraceId) -> &'a SpanData {
    let of: Vec<&SpanData> = named(spans, name)
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    assert_eq!(of.len(), 1, "one {name} span in trace {trace}: {:?}", names(spans));
    of[0]
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}

/// Each phase is a child of `run`, in the order of a run, one after the other.
fn assert_phases(spans: &[SpanData], run: &SpanData) {
    let trace = run.span_context.trace_id();
    let mut previous_end = run.start_time;
    for phase in PHASES {
        let span = one(spans, phase, trace);
        assert_eq!(
            span.parent_span_id,
            run.span_context.span_id(),
            "{phase} is a child of the run"
        );
        assert!(
            span.start_time >= previous_end,
            "{phase} starts after the phase before it ended"
        );
        assert!(span.end_time <= run.end_time, "{phase} ends inside the run");
        previous_end = span.end_time;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_is_one_trace_with_a_span_per_phase_and_its_id_in_the_report() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test binary");

    let root = TempRoot::new("spans");
    let source = sample_source(&root, 2_000).await;
    let create = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    sandbox::create(&create, &quiet).await.expect("sandbox");
    let state = root.state();
    let writer = Writer::start(source.admin().await.expect("writer"), 100);

    // Through the library, as the command line runs it: a trace of its own.
    let report = dry_run(&state, &options("spans-direct")).await.expect("dry-run");
    let spans = exporter.get_finished_spans().expect("spans");
    let runs = named(&spans, "dryrun");
    assert_eq!(runs.len(), 1, "one dryrun span: {:?}", names(&spans));
    let run = runs[0];
    let trace = run.span_context.trace_id();
    assert_eq!(
        run.parent_span_id,
        SpanId::INVALID,
        "a run of the command line starts its trace"
    );
    assert_eq!(
        report.trace_id.as_ref().map(ToString::to_string),
        Some(trace.to_string()),
        "the report carries the run's trace id"
    );
    assert!(report.text().contains(&format!("trace {trace}")), "{}", report.text());
    let verdict = run.attributes.iter().find(|kv| kv.key.as_str() == "verdict");
    assert_eq!(
        verdict.map(|kv| kv.value.to_string()),
        Some(report.verdict.result.as_str().to_string()),
        "the run's span records the verdict"
    );
    assert_phases(&spans, run);
    exporter.reset();

    // Through the agent's runs, as the API starts it, with a caller's trace context: the run joins that trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let runs = Runs::open(
        state.clone(),
        Arc::new(understudy::metrics::Metrics::new().expect("metrics")),
        1,
    );
    let view = runs
        .start(request(), Some(format!("00-{caller_trace}-{caller_span}-01")))
        .expect("accepted");
    let ended = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            let v = runs.get(&view.id).expect("run").view(false);
            if v.phase.is_final() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the run ends");
    writer.stop().await.expect("writer");
    assert_eq!(ended.phase, RunPhase::Succeeded, "{:?}", ended.error);
    assert_eq!(
        ended.trace_id.as_ref().map(|t| t.as_str()),
        Some(caller_trace),
        "the API shows the trace"
    );
    let spans = exporter.get_finished_spans().expect("spans");
    let trace = TraceId::from_hex(caller_trace).expect("trace id");
    let request_span = one(&spans, "agent_run", trace);
    assert_eq!(
        request_span.parent_span_id,
        SpanId::from_hex(caller_span).expect("span id"),
        "the run is a child of the caller's span"
    );
    let run = one(&spans, "dryrun", trace);
    assert_eq!(run.parent_span_id, request_span.span_context.span_id());
    assert_phases(&spans, run);
    let report = runs
        .report(&view.id, understudy::runs::ReportFormat::Json)
        .expect("report");
    assert!(report.contains(caller_trace), "the kept report carries the trace id");
    let _ = provider.shutdown();
}
