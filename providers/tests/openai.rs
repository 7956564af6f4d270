//! The OpenAI-compatible clients against a local fake that answers like the
//! real service: both result shapes, edits, every retryable failure
//! followed by recovery, and each permanent failure with its code.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::{collections::BTreeMap, io::Cursor, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use kiln_providers::{
    ProviderError,
    images::{ImageGenerator, ImageRequest, OpenAiImages},
    moderation::{Moderator, OpenAiModerator},
    openai::OpenAiEndpoint,
};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header, method, path},
};

fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(Cursor::new(&mut out), width, height);
    encoder.set_color(png::ColorType::Rgb);
    let mut writer = encoder.write_header().unwrap();
    writer
        .write_image_data(&vec![90u8; (width * height * 3) as usize])
        .unwrap();
    writer.finish().unwrap();
    out
}

fn endpoint(server: &MockServer) -> OpenAiEndpoint {
    OpenAiEndpoint {
        base_url: server.uri(),
        api_key: "sk-test-key".to_owned().into(),
        timeout: Duration::from_millis(500),
    }
}

fn request(n: u32) -> ImageRequest {
    ImageRequest {
        prompt: "a lighthouse at dusk".to_owned(),
        model: "gpt-image-1".to_owned(),
        width: 32,
        height: 16,
        n,
        reference_urls: Vec::new(),
    }
}

fn b64_answer(n: usize) -> Value {
    let image = BASE64.encode(png(32, 16));
    json!({
        "created": 1_700_000_000,
        "data": (0..n).map(|_| json!({ "b64_json": image })).collect::<Vec<_>>(),
        "usage": { "total_tokens": 100 },
    })
}

fn openai_error(code: &str, kind: &str, message: &str) -> Value {
    json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
}

async fn only_request(server: &MockServer) -> (String, Value, wiremock::Request) {
    let requests = server.received_requests().await.unwrap();
    let first = requests
        .into_iter()
        .next()
        .expect("a request reached the fake");
    let body: Value = serde_json::from_slice(&first.body).unwrap_or(Value::Null);
    (first.url.path().to_owned(), body, first)
}

#[tokio::test]
async fn generation_sends_only_the_prompt_and_shape_and_reads_b64_images() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .and(header("authorization", "Bearer sk-test-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(b64_answer(2)))
        .expect(1)
        .mount(&server)
        .await;
    let images = OpenAiImages::new(endpoint(&server), Some("low".into()))
        .generate(&request(2))
        .await
        .unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!((images[0].width, images[0].height), (32, 16));
    assert_eq!(images[0].png, png(32, 16));

    let (_, body, _) = only_request(&server).await;
    assert_eq!(
        body,
        json!({
            "model": "gpt-image-1", "prompt": "a lighthouse at dusk", "n": 2,
            "size": "32x16", "output_format": "png", "quality": "low",
        }),
        "exactly these fields: no `user`, nothing about who asked"
    );
}

#[tokio::test]
async fn url_results_are_downloaded_at_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "created": 1, "data": [{ "url": format!("{}/files/img-1.png", server.uri()) }],
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/files/img-1.png"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(png(32, 16)))
        .expect(1)
        .mount(&server)
        .await;
    let images = OpenAiImages::new(endpoint(&server), None)
        .generate(&request(1))
        .await
        .unwrap();
    assert_eq!(images[0].png, png(32, 16));
}

#[tokio::test]
async fn reference_images_go_to_edits_as_urls() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/edits"))
        .respond_with(ResponseTemplate::new(200).set_body_json(b64_answer(1)))
        .expect(1)
        .mount(&server)
        .await;
    let mut req = request(1);
    req.reference_urls = vec!["https://kiln.example/v1/files/refs/a.png?exp=1&sig=x".into()];
    OpenAiImages::new(endpoint(&server), None)
        .generate(&req)
        .await
        .unwrap();
    let (_, body, _) = only_request(&server).await;
    assert_eq!(
        body["images"],
        json!([{ "image_url": "https://kiln.example/v1/files/refs/a.png?exp=1&sig=x" }])
    );
}

/// Each retryable failure: the first call fails transiently (with the
/// provider's wait when it sent one), the retry succeeds.
#[tokio::test]
async fn retryable_failures_are_transient_and_recover() {
    let cases: Vec<(ResponseTemplate, &str, Option<Duration>)> = vec![
        (
            ResponseTemplate::new(429)
                .insert_header("retry-after-ms", "1200")
                .set_body_json(openai_error(
                    "rate_limit_exceeded",
                    "requests",
                    "Rate limit reached",
                )),
            "rate_limit_exceeded",
            Some(Duration::from_millis(1200)),
        ),
        (
            ResponseTemplate::new(429)
                .insert_header("retry-after", "3")
                .set_body_json(openai_error(
                    "rate_limit_exceeded",
                    "requests",
                    "Rate limit reached",
                )),
            "rate_limit_exceeded",
            Some(Duration::from_secs(3)),
        ),
        (
            ResponseTemplate::new(503).set_body_string("upstream unavailable"),
            "server_error",
            None,
        ),
        (
            ResponseTemplate::new(200)
                .set_body_json(b64_answer(1))
                .set_delay(Duration::from_secs(2)),
            "timeout",
            None,
        ),
    ];
    for (failure, code, wait) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(failure)
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(b64_answer(1)))
            .mount(&server)
            .await;
        let images = OpenAiImages::new(endpoint(&server), None);
        match images.generate(&request(1)).await {
            Err(ProviderError::Transient {
                code: got,
                retry_after,
                ..
            }) => {
                assert_eq!(got, code);
                assert_eq!(retry_after, wait, "{code}");
            }
            other => panic!("{code}: expected a transient error, got {other:?}"),
        }
        assert_eq!(images.generate(&request(1)).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_dropped_connection_is_transient() {
    // Accepts and closes at once, like a server that resets under load.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let images = OpenAiImages::new(
        OpenAiEndpoint {
            base_url: format!("http://{addr}"),
            api_key: "sk-test-key".to_owned().into(),
            timeout: Duration::from_millis(500),
        },
        None,
    );
    let err = images.generate(&request(1)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient { .. }), "{err:?}");
    assert_eq!(err.code(), "connection_failed");
}

#[tokio::test]
async fn permanent_failures_fail_at_once_with_their_code() {
    let cases = vec![
        (
            ResponseTemplate::new(400).set_body_json(openai_error(
                "moderation_blocked",
                "image_generation_user_error",
                "Your request was rejected by the safety system.",
            )),
            "content_blocked",
        ),
        (
            ResponseTemplate::new(429).set_body_json(openai_error(
                "insufficient_quota",
                "insufficient_quota",
                "You exceeded your current quota.",
            )),
            "insufficient_quota",
        ),
        (
            ResponseTemplate::new(401).set_body_json(openai_error(
                "invalid_api_key",
                "invalid_request_error",
                "Incorrect API key provided.",
            )),
            "invalid_api_key",
        ),
        (
            ResponseTemplate::new(400).set_body_json(json!({
                "error": { "message": "Invalid size", "type": "invalid_request_error",
                           "param": "size", "code": null }
            })),
            "invalid_request_error",
        ),
        (ResponseTemplate::new(403), "forbidden"),
        (ResponseTemplate::new(422), "unprocessable_entity"),
    ];
    for (answer, code) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(answer)
            .expect(1)
            .mount(&server)
            .await;
        let err = OpenAiImages::new(endpoint(&server), None)
            .generate(&request(1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProviderError::Permanent { .. }),
            "{code}: {err:?}"
        );
        assert_eq!(err.code(), code);
    }
}

#[tokio::test]
async fn short_or_broken_answers_are_refused() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(b64_answer(1)))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": [{ "b64_json": BASE64.encode(b"<html>not a png</html>") }]
        })))
        .mount(&server)
        .await;
    let images = OpenAiImages::new(endpoint(&server), None);
    let err = images.generate(&request(2)).await.unwrap_err();
    assert_eq!(err.code(), "incomplete_response");
    let err = images.generate(&request(1)).await.unwrap_err();
    assert_eq!(err.code(), "invalid_image");
}

fn moderation_answer(flagged: bool, violence: f64) -> Value {
    json!({
        "id": "modr-1", "model": "omni-moderation-latest",
        "results": [{
            "flagged": flagged,
            "categories": { "violence": flagged, "sexual": false, "sexual/minors": false },
            "category_scores": { "violence": violence, "sexual": 0.001, "sexual/minors": 0.0001 },
            "category_applied_input_types": { "violence": ["text"] },
        }]
    })
}

#[tokio::test]
async fn moderation_reads_flags_and_scores_for_text() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/moderations"))
        .and(header("authorization", "Bearer sk-test-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(moderation_answer(true, 0.97)))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/moderations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(moderation_answer(false, 0.02)))
        .mount(&server)
        .await;
    let moderator = OpenAiModerator::new(
        endpoint(&server),
        "omni-moderation-latest".into(),
        BTreeMap::new(),
    );
    let decision = moderator.check_text("a violent prompt").await.unwrap();
    assert!(!decision.allowed);
    assert_eq!(decision.categories, vec!["violence".to_owned()]);
    assert_eq!(decision.scores["violence"], 0.97);
    let decision = moderator.check_text("a lighthouse").await.unwrap();
    assert!(decision.allowed);
    assert!(decision.categories.is_empty());

    let (_, body, _) = only_request(&server).await;
    assert_eq!(
        body,
        json!({ "model": "omni-moderation-latest",
                "input": [{ "type": "text", "text": "a violent prompt" }] })
    );
}

#[tokio::test]
async fn moderation_thresholds_are_stricter_than_the_flag() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(moderation_answer(false, 0.4)))
        .mount(&server)
        .await;
    let moderator = OpenAiModerator::new(
        endpoint(&server),
        "omni-moderation-latest".into(),
        BTreeMap::from([("violence".to_owned(), 0.3)]),
    );
    let decision = moderator.check_text("a tense scene").await.unwrap();
    assert!(!decision.allowed);
    assert_eq!(decision.categories, vec!["violence".to_owned()]);
}

#[tokio::test]
async fn images_are_moderated_inline_as_data_urls() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(moderation_answer(false, 0.0)))
        .mount(&server)
        .await;
    let moderator = OpenAiModerator::new(
        endpoint(&server),
        "omni-moderation-latest".into(),
        BTreeMap::new(),
    );
    let image = png(8, 8);
    assert!(moderator.check_image(&image).await.unwrap().allowed);
    let (_, body, _) = only_request(&server).await;
    assert_eq!(
        body["input"],
        json!([{ "type": "image_url", "image_url": {
            "url": format!("data:image/png;base64,{}", BASE64.encode(&image)) } }])
    );
}

#[tokio::test]
async fn moderation_failures_keep_the_retry_decision() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_json(openai_error(
            "server_error",
            "server_error",
            "The server had an error",
        )))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    let moderator = OpenAiModerator::new(
        endpoint(&server),
        "omni-moderation-latest".into(),
        BTreeMap::new(),
    );
    let err = moderator.check_text("x").await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient { .. }));
    assert_eq!(err.code(), "server_error");
    let err = moderator.check_text("x").await.unwrap_err();
    assert!(matches!(err, ProviderError::Permanent { .. }));
    assert_eq!(err.code(), "unauthorized");
}
