//! An OTLP/HTTP traces receiver on a loopback port, for the tests of the exporters: it decodes each
//! `POST /v1/traces` (protobuf `ExportTraceServiceRequest`, OpenTelemetry's own message types) and keeps the
//! spans, with the service that sent them. A request it cannot decode is answered 400 and counted.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

/// One received span, its ids in hex as W3C Trace Context writes them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
}

#[derive(Default)]
struct Inbox {
    spans: Vec<ReceivedSpan>,
    requests: usize,
    refused: Vec<String>,
}

/// The receiver; it stops with the test's runtime.
pub struct Receiver {
    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    inbox: Arc<Mutex<Inbox>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode(kind: &str, body: &[u8]) -> Result<Vec<ReceivedSpan>, String> {
    if kind != "application/x-protobuf" {
        return Err(format!("content type {kind:?}, not application/x-protobuf"));
    }
    let request = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
    let mut spans = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
            });
        }
    }
    Ok(spans)
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Receiver> {
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let keep = Arc::clone(&inbox);
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let keep = Arc::clone(&keep);
                async move {
                    let kind = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let decoded = decode(kind, &body);
                    let Ok(mut inbox) = keep.lock() else {
                        return answer(StatusCode::INTERNAL_SERVER_ERROR);
                    };
                    inbox.requests += 1;
                    match decoded {
                        Ok(spans) => {
                            inbox.spans.extend(spans);
                            // An empty ExportTraceServiceResponse.
                            answer(StatusCode::OK)
                        }
                        Err(e) => {
                            inbox.refused.push(e);
                            answer(StatusCode::BAD_REQUEST)
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver { endpoint, inbox })
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.inbox.lock().map(|i| i.spans.clone()).unwrap_or_default()
    }

    /// How many export requests arrived, and why those that did not decode were refused.
    pub fn requests(&self) -> (usize, Vec<String>) {
        self.inbox
            .lock()
            .map(|i| (i.requests, i.refused.clone()))
            .unwrap_or_default()
    }
}

type Answer = (StatusCode, [(&'static str, &'static str); 1], Vec<u8>);

fn answer(status: StatusCode) -> Answer {
    (status, [("content-type", "application/x-protobuf")], Vec::new())
}
