//! Test support: a `Context` whose client talks to a mock API server, and a verifier that answers the requests a
//! reconcile branch is expected to make, in order (kube's `tower-test` mock service, as controller-rs does).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;

use super::{Context, Settings};
use crate::metrics::Metrics;

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

impl Context {
    /// A context on a mock API server, and its handle.
    pub fn test() -> (Arc<Context>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let settings = Settings {
            agent_image: "understudy:test".into(),
            namespace: Some("ns".into()),
            poll: Duration::from_secs(15),
            otlp_endpoint: None,
        };
        (Context::new(client, metrics, settings), handle)
    }
}

/// One expected request: its method and a path prefix; answers with `status` and `body`. Returns the request's
/// JSON body (null when it has none).
pub async fn expect(
    handle: &mut Handle,
    method: &str,
    path: &str,
    status: u16,
    body: serde_json::Value,
) -> serde_json::Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {method} {path} within 5 s"))
        .expect("the client is gone");
    assert_eq!(request.method().as_str(), method, "{}", request.uri());
    assert!(
        request.uri().path().starts_with(path),
        "{} {} is not {method} {path}",
        request.method(),
        request.uri()
    );
    let bytes = http_body_util_collect(request.into_body()).await;
    let sent = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).expect("json")))
        .expect("response");
    send.send_response(response);
    sent
}

/// A Kubernetes `Status` answer for an error `code`.
pub fn status(code: u16, reason: &str) -> serde_json::Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
        "message": reason})
}

/// Answers an Event the recorder posts (any), returning its note.
pub async fn event(handle: &mut Handle) -> String {
    let sent = expect(
        handle,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/",
        201,
        serde_json::json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "ns"},
        "eventTime": "2026-12-01T00:00:00.000000Z"}),
    )
    .await;
    sent["note"].as_str().unwrap_or_default().to_string()
}

/// Nothing more is asked within a short while.
pub async fn silence(handle: &mut Handle) {
    if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await {
        panic!("unexpected {} {}", request.method(), request.uri());
    }
}

async fn http_body_util_collect(body: Body) -> Vec<u8> {
    use http_body_util::BodyExt;
    body.collect().await.map(|c| c.to_bytes().to_vec()).unwrap_or_default()
}
