// The cases of `http_checker.rs`, compiled once per transport (included, not
// a test target of its own).

fn checker() -> HttpHealthChecker {
    builder().timeout(TIMEOUT).build().unwrap()
}

fn node(server: &Server) -> NodeSpec {
    NodeSpec::new("node-a", server.url.clone())
}

#[tokio::test]
async fn healthy_model_list() {
    let server = serve(ok(MODELS)).await;
    let c = checker();
    let latency = c.check(&node(&server)).await.unwrap();
    assert!(latency < TIMEOUT);
    assert_eq!(
        c.list_models(&node(&server)).await.unwrap(),
        vec!["tiny-llama", "other"]
    );
    let head = server.requests.lock()[0].clone();
    assert!(head.starts_with("GET /v1/models HTTP/1.1\r\n"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("authorization"));
}

#[tokio::test]
async fn http10_close_delimited_body_like_mlx() {
    let server = serve(Behavior::Http10(MODELS)).await;
    let c = checker();
    c.check(&node(&server)).await.unwrap();
    c.check(&node(&server)).await.unwrap();
    assert_eq!(c.list_models(&node(&server)).await.unwrap().len(), 2);
}

#[tokio::test]
async fn hang_past_the_timeout() {
    let server = serve(Behavior::Hang).await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    match err {
        HealthError::Timeout { node, timeout } => {
            assert_eq!(node.as_str(), "node-a");
            assert_eq!(timeout, TIMEOUT);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn slow_headers_time_out() {
    let server = serve(Behavior::SlowHeaders).await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    assert!(matches!(err, HealthError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn slow_body_times_out() {
    let server = serve(Behavior::SlowBody).await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    assert!(matches!(err, HealthError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn internal_server_error_is_a_failed_status() {
    let server = serve(Behavior::Respond {
        status: "500 Internal Server Error",
        headers: vec![],
        body: "boom".into(),
    })
    .await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    match &err {
        HealthError::FailedStatus { node, code, text } => {
            assert_eq!(node.as_str(), "node-a");
            assert_eq!(*code, 500);
            assert_eq!(text, "Internal Server Error");
        }
        other => panic!("expected FailedStatus, got {other:?}"),
    }
    assert_eq!(err.observation(), cluster_health::Observation::Failure);
}

#[tokio::test]
async fn not_found_is_a_failed_status() {
    let server = serve(Behavior::Respond {
        status: "404 Not Found",
        headers: vec![],
        body: String::new(),
    })
    .await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    assert!(
        matches!(err, HealthError::FailedStatus { code: 404, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn service_unavailable_with_retry_after_is_overload() {
    let server = serve(Behavior::Respond {
        status: "503 Service Unavailable",
        headers: vec!["Retry-After: 7".into()],
        body: "busy".into(),
    })
    .await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    match err {
        HealthError::Overloaded {
            code, retry_after, ..
        } => {
            assert_eq!(code, 503);
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
}

#[tokio::test]
async fn too_many_requests_with_an_http_date() {
    let server = serve(Behavior::Respond {
        status: "429 Too Many Requests",
        headers: vec!["Retry-After: Fri, 31 Dec 1999 23:59:59 GMT".into()],
        body: String::new(),
    })
    .await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    match err {
        // A date in the past: retry at once.
        HealthError::Overloaded {
            code, retry_after, ..
        } => {
            assert_eq!(code, 429);
            assert_eq!(retry_after, Some(Duration::ZERO));
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
}

#[tokio::test]
async fn service_unavailable_loading_model_is_loading() {
    let server = serve(Behavior::Respond {
        status: "503 Service Unavailable",
        headers: vec!["Content-Type: application/json".into()],
        body: r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#
            .into(),
    })
    .await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    assert!(matches!(err, HealthError::Loading { .. }), "{err:?}");
    assert_eq!(err.observation(), cluster_health::Observation::Loading);
}

#[tokio::test]
async fn garbage_json_is_invalid() {
    for body in [
        "{\"data\": [",
        "<html>hello</html>",
        "{\"data\": {\"id\": 1}}",
        "[]",
        "",
    ] {
        let server = serve(ok(body)).await;
        let err = checker().check(&node(&server)).await.unwrap_err();
        match err {
            HealthError::InvalidResponse { node, reason } => {
                assert_eq!(node.as_str(), "node-a");
                assert!(!reason.is_empty());
            }
            other => panic!("{body:?}: expected InvalidResponse, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn status_only_validation_accepts_any_2xx() {
    let server = serve(ok("ok")).await;
    let c = builder()
        .probe_path("/health")
        .timeout(TIMEOUT)
        .build()
        .unwrap();
    assert_eq!(c.validation_for("/health"), ResponseValidation::StatusOnly);
    c.check(&node(&server)).await.unwrap();
    assert!(server.requests.lock()[0].starts_with("GET /health "));
    // list_models always asks /v1/models, and validates.
    assert!(matches!(
        c.list_models(&node(&server)).await.unwrap_err(),
        HealthError::InvalidResponse { .. }
    ));
}

#[tokio::test]
async fn oversized_body_is_invalid() {
    let big = format!(r#"{{"data":[{{"id":"{}"}}]}}"#, "x".repeat(4096));
    let server = serve(ok(&big)).await;
    let c = builder()
        .timeout(TIMEOUT)
        .max_body_bytes(1024)
        .build()
        .unwrap();
    let err = c.check(&node(&server)).await.unwrap_err();
    assert!(
        matches!(err, HealthError::InvalidResponse { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn connection_reset_is_a_network_error() {
    let server = serve(Behavior::Reset).await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    assert!(matches!(err, HealthError::Network { .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test]
async fn connection_refused_is_a_network_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = checker()
        .check(&NodeSpec::new("gone", url))
        .await
        .unwrap_err();
    match &err {
        HealthError::Network { node, source } => {
            assert_eq!(node.as_str(), "gone");
            // The URL is stripped from the source.
            assert!(!source.to_string().contains("127.0.0.1"), "{source}");
        }
        other => panic!("expected Network, got {other:?}"),
    }
}

#[tokio::test]
async fn bearer_key_is_sent_and_never_printed() {
    let server = serve(ok(MODELS)).await;
    let mut spec = node(&server);
    spec.api_key = Some(ApiKey::new("sk-very-secret"));
    let c = checker();
    c.check(&spec).await.unwrap();
    let head = server.requests.lock()[0].clone();
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer sk-very-secret\r\n"),
        "{head}"
    );
    assert!(!format!("{c:?}").contains("sk-very-secret"));
    assert!(!format!("{spec:?}").contains("sk-very-secret"));

    // Errors do not carry it either.
    let failing = serve(Behavior::Respond {
        status: "401 Unauthorized",
        headers: vec![],
        body: "sk-very-secret is wrong".into(),
    })
    .await;
    let mut spec = node(&failing);
    spec.api_key = Some(ApiKey::new("sk-very-secret"));
    let err = c.check(&spec).await.unwrap_err();
    assert!(matches!(err, HealthError::FailedStatus { code: 401, .. }));
    assert!(!format!("{err:?} {err}").contains("sk-very-secret"));
}

#[tokio::test]
async fn trailing_slash_and_path_prefix() {
    let server = serve(ok(MODELS)).await;
    let spec = NodeSpec::new("p", format!("{}/prefix/", server.url));
    checker().check(&spec).await.unwrap();
    assert!(server.requests.lock()[0].starts_with("GET /prefix/v1/models "));
}

#[tokio::test]
async fn chunked_body() {
    let server = serve(Behavior::Raw(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n\
         b\r\n{\"data\":[{\"\r\n\
         13;ext=1\r\nid\":\"tiny-llama\"}]}\r\n\
         0\r\nX-Trailer: 1\r\n\r\n",
    ))
    .await;
    let c = checker();
    assert_eq!(
        c.list_models(&node(&server)).await.unwrap(),
        vec!["tiny-llama"]
    );
    // The connection is reusable after a complete chunked body.
    c.check(&node(&server)).await.unwrap();
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let server = serve(ok(MODELS)).await;
    let c = checker();
    for _ in 0..5 {
        c.check(&node(&server)).await.unwrap();
    }
    assert_eq!(server.requests.lock().len(), 5);
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let server = serve(Behavior::Respond {
        status: "200 OK",
        headers: vec!["Connection: close".into()],
        body: MODELS.into(),
    })
    .await;
    let c = checker();
    c.check(&node(&server)).await.unwrap();
    c.check(&node(&server)).await.unwrap();
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test]
async fn a_stale_pooled_connection_is_retried() {
    let server = serve(Behavior::CloseAfterAnswer).await;
    let c = checker();
    for _ in 0..4 {
        c.check(&node(&server)).await.unwrap();
    }
    assert_eq!(server.requests.lock().len(), 4);
}

#[tokio::test]
async fn a_server_that_does_not_speak_http_fails() {
    let server = serve(Behavior::Raw("SSH-2.0-OpenSSH_9.6\r\n\r\n")).await;
    let err = checker().check(&node(&server)).await.unwrap_err();
    assert!(
        matches!(
            err,
            HealthError::InvalidResponse { .. } | HealthError::Network { .. }
        ),
        "{err:?}"
    );
}
