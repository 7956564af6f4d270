//! The fal.ai queue client against a local fake speaking its wire format:
//! submit, status polls through IN_QUEUE / IN_PROGRESS / COMPLETED, result
//! and download; every retryable and permanent failure with its code;
//! cancellation and `max_wait` cancelling at fal. And the offline dev
//! upscaler on real PNGs.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::{io::Cursor, time::Duration};

use bytes::Bytes;
use kiln_providers::{
    ProviderError,
    upscale::{DevUpscaler, FalEndpoint, FalUpscaler, UpscaleRequest, Upscaler},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wiremock::{
    Mock, MockServer, Request, ResponseTemplate,
    matchers::{header, method, path},
};

const KEY: &str = "fal-test-key";
const MODEL: &str = "fal-ai/esrgan";
const SUBMIT: &str = "/fal-ai/esrgan";
const STATUS: &str = "/fal-ai/esrgan/requests/req-1/status";
const RESULT: &str = "/fal-ai/esrgan/requests/req-1";
const CANCEL: &str = "/fal-ai/esrgan/requests/req-1/cancel";
const FILE: &str = "/files/out.png";
const SIGNED_URL: &str = "https://kiln.example/v1/files/src.png?exp=1&sig=s3cr3t";

fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(Cursor::new(&mut out), width, height);
    encoder.set_color(png::ColorType::Rgb);
    let mut writer = encoder.write_header().unwrap();
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    writer.write_image_data(&pixels).unwrap();
    writer.finish().unwrap();
    out
}

fn decode(bytes: &[u8]) -> (u32, u32, png::ColorType, Vec<u8>) {
    let mut reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    pixels.truncate(frame.buffer_size());
    (frame.width, frame.height, frame.color_type, pixels)
}

fn upscaler_with(server: &MockServer, timeout: Duration, max_wait: Duration) -> FalUpscaler {
    FalUpscaler::new(FalEndpoint {
        queue_base_url: server.uri(),
        model_id: MODEL.to_owned(),
        api_key: KEY.to_owned().into(),
        timeout,
        poll_interval: Duration::from_millis(10),
        max_wait,
    })
}

fn upscaler(server: &MockServer) -> FalUpscaler {
    upscaler_with(server, Duration::from_millis(500), Duration::from_secs(5))
}

fn request() -> UpscaleRequest {
    UpscaleRequest {
        image_url: SIGNED_URL.to_owned(),
        scale: 2,
        source_png: Some(Bytes::from_static(b"ignored by real providers")),
    }
}

fn queued(server: &MockServer) -> Value {
    let base = server.uri();
    json!({
        "request_id": "req-1",
        "status": "IN_QUEUE",
        "status_url": format!("{base}{STATUS}"),
        "response_url": format!("{base}{RESULT}"),
        "cancel_url": format!("{base}{CANCEL}"),
        "queue_position": 3,
    })
}

fn status(s: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(match s {
        "IN_QUEUE" => json!({ "status": s, "queue_position": 1 }),
        "IN_PROGRESS" => json!({ "status": s, "logs": [{ "message": "upscaling" }] }),
        _ => json!({ "status": s, "logs": [] }),
    })
}

fn result(server: &MockServer, width: Option<u32>) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "image": {
            "url": format!("{}{FILE}", server.uri()),
            "width": width, "height": width.map(|w| w / 2),
            "content_type": "image/png",
        },
        "seed": 42,
    }))
}

async fn mount_submit(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path(SUBMIT))
        .respond_with(ResponseTemplate::new(200).set_body_json(queued(server)))
        .mount(server)
        .await;
}

async fn mount_cancel(server: &MockServer) {
    Mock::given(method("PUT"))
        .and(path(CANCEL))
        .respond_with(
            ResponseTemplate::new(202).set_body_json(json!({ "status": "CANCELLATION_REQUESTED" })),
        )
        .mount(server)
        .await;
}

/// A status answer served `times` times, then the next one mounted.
async fn mount_status(server: &MockServer, answer: ResponseTemplate, times: Option<u64>) {
    let mock = Mock::given(method("GET"))
        .and(path(STATUS))
        .respond_with(answer);
    match times {
        Some(n) => mock.up_to_n_times(n).mount(server).await,
        None => mock.mount(server).await,
    }
}

async fn mount_result_and_file(server: &MockServer, file: Vec<u8>) {
    Mock::given(method("GET"))
        .and(path(RESULT))
        .respond_with(result(server, Some(64)))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(FILE))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(file))
        .mount(server)
        .await;
}

async fn requests_to(server: &MockServer, verb: &str, to: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == verb && r.url.path() == to)
        .collect()
}

fn transient(err: &ProviderError) -> Option<Duration> {
    match err {
        ProviderError::Transient { retry_after, .. } => *retry_after,
        other => panic!("expected a transient error, got {other:?}"),
    }
}

#[tokio::test]
async fn queued_then_running_then_completed_downloads_the_image() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(SUBMIT))
        .and(header("authorization", &*format!("Key {KEY}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(queued(&server)))
        .expect(1)
        .mount(&server)
        .await;
    mount_status(&server, status("IN_QUEUE"), Some(2)).await;
    mount_status(&server, status("IN_PROGRESS"), Some(1)).await;
    mount_status(&server, status("COMPLETED"), None).await;
    mount_result_and_file(&server, png(64, 32)).await;
    mount_cancel(&server).await;

    let image = upscaler(&server)
        .upscale(&request(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(image.bytes, png(64, 32));
    assert_eq!(image.content_type, "image/png");
    assert_eq!((image.width, image.height), (64, 32));

    let submits = requests_to(&server, "POST", SUBMIT).await;
    let body: Value = serde_json::from_slice(&submits[0].body).unwrap();
    assert_eq!(
        body,
        json!({ "image_url": SIGNED_URL, "scale": 2 }),
        "exactly these fields: nothing about who asked, no source bytes"
    );
    let polls = requests_to(&server, "GET", STATUS).await;
    assert_eq!(polls.len(), 4, "IN_QUEUE ×2, IN_PROGRESS, COMPLETED");
    let results = requests_to(&server, "GET", RESULT).await;
    assert_eq!(results.len(), 1);
    for r in polls.iter().chain(&results) {
        assert_eq!(r.headers["authorization"], format!("Key {KEY}").as_str());
    }
    let downloads = requests_to(&server, "GET", FILE).await;
    assert_eq!(downloads.len(), 1);
    assert!(
        !downloads[0].headers.contains_key("authorization"),
        "the key goes to the queue host only"
    );
    assert!(requests_to(&server, "PUT", CANCEL).await.is_empty());
}

#[tokio::test]
async fn the_result_size_comes_from_the_json_when_the_image_is_not_a_png() {
    let server = MockServer::start().await;
    mount_submit(&server).await;
    mount_status(&server, status("COMPLETED"), None).await;
    let jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00rest-of-a-jpeg".to_vec();
    mount_result_and_file(&server, jpeg.clone()).await;
    let image = upscaler(&server)
        .upscale(&request(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(image.bytes, jpeg);
    assert_eq!(image.content_type, "image/jpeg");
    assert_eq!((image.width, image.height), (64, 32));
}

#[tokio::test]
async fn submit_failures_that_can_recover_are_transient() {
    let cases: Vec<(ResponseTemplate, &str, Option<Duration>)> = vec![
        (
            ResponseTemplate::new(429)
                .insert_header("retry-after", "7")
                .set_body_json(json!({ "detail": "Too many requests" })),
            "rate_limited",
            Some(Duration::from_secs(7)),
        ),
        (
            ResponseTemplate::new(503).set_body_string("upstream unavailable"),
            "server_error",
            None,
        ),
        (
            ResponseTemplate::new(502).set_body_json(json!({ "detail": "bad gateway" })),
            "server_error",
            None,
        ),
        (
            ResponseTemplate::new(200)
                .set_body_json(json!({ "request_id": "late" }))
                .set_delay(Duration::from_secs(2)),
            "timeout",
            None,
        ),
    ];
    for (failure, code, wait) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(SUBMIT))
            .respond_with(failure)
            .mount(&server)
            .await;
        let err = upscaler(&server)
            .upscale(&request(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert_eq!(transient(&err), wait, "{code}");
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
    let fal = FalUpscaler::new(FalEndpoint {
        queue_base_url: format!("http://{addr}"),
        model_id: MODEL.to_owned(),
        api_key: KEY.to_owned().into(),
        timeout: Duration::from_millis(500),
        poll_interval: Duration::from_millis(10),
        max_wait: Duration::from_secs(5),
    });
    let err = fal
        .upscale(&request(), &CancellationToken::new())
        .await
        .unwrap_err();
    transient(&err);
    assert_eq!(err.code(), "connection_failed");
}

#[tokio::test]
async fn auth_and_validation_failures_are_permanent_with_their_code() {
    let cases = vec![
        (
            ResponseTemplate::new(401).set_body_json(json!({ "detail": "Invalid key" })),
            "unauthorized",
            "fal answered 401: Invalid key",
        ),
        (
            // fal's validation errors echo the input: the signed URL must
            // not reach the error history.
            ResponseTemplate::new(422).set_body_json(json!({ "detail": [{
                "loc": ["body", "scale"],
                "msg": "Input should be less than or equal to 8",
                "type": "less_than_equal",
                "input": SIGNED_URL,
            }] })),
            "unprocessable_entity",
            "fal answered 422: Input should be less than or equal to 8",
        ),
        (
            ResponseTemplate::new(403).set_body_json(json!({ "detail": "Forbidden" })),
            "forbidden",
            "fal answered 403: Forbidden",
        ),
        (
            ResponseTemplate::new(404).set_body_json(json!({ "detail": "No such app" })),
            "not_found",
            "fal answered 404: No such app",
        ),
    ];
    for (failure, code, message) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(failure)
            .expect(1)
            .mount(&server)
            .await;
        let err = upscaler(&server)
            .upscale(&request(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err, ProviderError::permanent(code, message));
    }
}

#[tokio::test]
async fn transient_status_errors_are_polled_through() {
    let server = MockServer::start().await;
    mount_submit(&server).await;
    mount_status(&server, status("IN_QUEUE"), Some(1)).await;
    mount_status(&server, ResponseTemplate::new(503), Some(1)).await;
    mount_status(
        &server,
        ResponseTemplate::new(429).insert_header("retry-after", "0"),
        Some(1),
    )
    .await;
    mount_status(&server, ResponseTemplate::new(502), Some(1)).await;
    mount_status(&server, status("IN_PROGRESS"), Some(1)).await;
    mount_status(&server, ResponseTemplate::new(504), Some(1)).await;
    mount_status(&server, status("COMPLETED"), None).await;
    mount_result_and_file(&server, png(64, 32)).await;
    mount_cancel(&server).await;

    let image = upscaler(&server)
        .upscale(&request(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((image.width, image.height), (64, 32));
    assert_eq!(requests_to(&server, "GET", STATUS).await.len(), 7);
    assert!(requests_to(&server, "PUT", CANCEL).await.is_empty());
}

#[tokio::test]
async fn too_many_status_errors_in_a_row_give_up_and_cancel() {
    let server = MockServer::start().await;
    mount_submit(&server).await;
    mount_status(&server, ResponseTemplate::new(503), None).await;
    mount_cancel(&server).await;

    let err = upscaler(&server)
        .upscale(&request(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "server_error");
    transient(&err);
    assert_eq!(
        requests_to(&server, "GET", STATUS).await.len(),
        4,
        "the first failure and three tolerated ones"
    );
    assert_eq!(requests_to(&server, "PUT", CANCEL).await.len(), 1);
}

#[tokio::test]
async fn cancelling_mid_poll_cancels_at_fal() {
    let server = MockServer::start().await;
    mount_submit(&server).await;
    mount_status(&server, status("IN_PROGRESS"), None).await;
    mount_cancel(&server).await;

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        trigger.cancel();
    });
    let err = upscaler(&server)
        .upscale(&request(), &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Permanent { .. }), "{err:?}");
    assert_eq!(err.code(), "cancelled");
    assert!(requests_to(&server, "GET", STATUS).await.len() >= 2);
    let cancels = requests_to(&server, "PUT", CANCEL).await;
    assert_eq!(cancels.len(), 1);
    assert_eq!(
        cancels[0].headers["authorization"],
        format!("Key {KEY}").as_str()
    );
    assert!(requests_to(&server, "GET", RESULT).await.is_empty());
}

#[tokio::test]
async fn a_cancel_answered_400_already_completed_still_ends_cancelled() {
    let server = MockServer::start().await;
    mount_submit(&server).await;
    mount_status(&server, status("IN_QUEUE"), None).await;
    Mock::given(method("PUT"))
        .and(path(CANCEL))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({ "status": "ALREADY_COMPLETED" })),
        )
        .expect(1)
        .mount(&server)
        .await;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        trigger.cancel();
    });
    let err = upscaler(&server)
        .upscale(&request(), &cancel)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "cancelled");
}

#[tokio::test]
async fn already_cancelled_submits_nothing() {
    let server = MockServer::start().await;
    mount_submit(&server).await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let err = upscaler(&server)
        .upscale(&request(), &cancel)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "cancelled");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn max_wait_cancels_at_fal_and_is_a_transient_timeout() {
    let server = MockServer::start().await;
    mount_submit(&server).await;
    mount_status(&server, status("IN_QUEUE"), None).await;
    mount_cancel(&server).await;

    let started = std::time::Instant::now();
    let err = upscaler_with(
        &server,
        Duration::from_millis(500),
        Duration::from_millis(150),
    )
    .upscale(&request(), &CancellationToken::new())
    .await
    .unwrap_err();
    assert_eq!(err.code(), "timeout");
    transient(&err);
    // The status stays IN_QUEUE for ever: returning at all is max_wait's
    // doing, and not before it ran out.
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(requests_to(&server, "PUT", CANCEL).await.len(), 1);
}

#[tokio::test]
async fn completed_with_an_error_result_reads_the_error() {
    for (status_code, code, permanent) in [
        (422, "unprocessable_entity", true),
        (500, "server_error", false),
    ] {
        let server = MockServer::start().await;
        mount_submit(&server).await;
        mount_status(&server, status("COMPLETED"), None).await;
        Mock::given(method("GET"))
            .and(path(RESULT))
            .respond_with(
                ResponseTemplate::new(status_code)
                    .set_body_json(json!({ "detail": "Image could not be processed" })),
            )
            .mount(&server)
            .await;
        let err = upscaler(&server)
            .upscale(&request(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.code(), code);
        assert_eq!(
            matches!(err, ProviderError::Permanent { .. }),
            permanent,
            "{err:?}"
        );
        assert!(err.to_string().contains("Image could not be processed"));
    }
}

#[tokio::test]
async fn a_result_that_is_not_an_image_is_refused() {
    let server = MockServer::start().await;
    mount_submit(&server).await;
    mount_status(&server, status("COMPLETED"), None).await;
    mount_result_and_file(&server, b"<html>not found</html>".to_vec()).await;
    let err = upscaler(&server)
        .upscale(&request(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_image");
}

#[tokio::test]
async fn request_urls_on_another_host_never_get_the_key() {
    let server = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(SUBMIT))
        .respond_with(ResponseTemplate::new(200).set_body_json(queued(&elsewhere)))
        .mount(&server)
        .await;
    let err = upscaler(&server)
        .upscale(&request(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_response");
    assert!(elsewhere.received_requests().await.unwrap().is_empty());
}

fn dev_request(source: Vec<u8>, scale: u32) -> UpscaleRequest {
    UpscaleRequest {
        image_url: SIGNED_URL.to_owned(),
        scale,
        source_png: Some(Bytes::from(source)),
    }
}

#[tokio::test]
async fn dev_upscaler_scales_nearest_neighbour() {
    let source = png(8, 6);
    let image = DevUpscaler
        .upscale(&dev_request(source.clone(), 2), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((image.width, image.height), (16, 12));
    assert_eq!(image.content_type, "image/png");

    let (_, _, _, before) = decode(&source);
    let (width, height, colour, after) = decode(&image.bytes);
    assert_eq!((width, height, colour), (16, 12, png::ColorType::Rgb));
    for y in 0..12usize {
        for x in 0..16usize {
            let out = (y * 16 + x) * 3;
            let src = ((y / 2) * 8 + x / 2) * 3;
            assert_eq!(after[out..out + 3], before[src..src + 3], "pixel {x},{y}");
        }
    }
}

#[tokio::test]
async fn dev_upscaler_keeps_alpha_and_scale_one_is_identity() {
    let mut source = Vec::new();
    let mut encoder = png::Encoder::new(Cursor::new(&mut source), 3, 2);
    encoder.set_color(png::ColorType::Rgba);
    let mut writer = encoder.write_header().unwrap();
    let pixels: Vec<u8> = (0..24).collect();
    writer.write_image_data(&pixels).unwrap();
    writer.finish().unwrap();

    let image = DevUpscaler
        .upscale(&dev_request(source.clone(), 1), &CancellationToken::new())
        .await
        .unwrap();
    let (width, height, colour, after) = decode(&image.bytes);
    assert_eq!((width, height, colour), (3, 2, png::ColorType::Rgba));
    assert_eq!(after, pixels);

    let image = DevUpscaler
        .upscale(&dev_request(source, 4), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((image.width, image.height), (12, 8));
}

#[tokio::test]
async fn dev_upscaler_refuses_bad_scales_and_sources() {
    for scale in [0, 5, 100] {
        let err = DevUpscaler
            .upscale(&dev_request(png(8, 6), scale), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ProviderError::permanent(
                "invalid_scale",
                format!("scale {scale} is not one the dev upscaler makes (1 to 4)")
            )
        );
    }
    let err = DevUpscaler
        .upscale(
            &dev_request(b"not a png".to_vec(), 2),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Permanent { .. }), "{err:?}");
    assert_eq!(err.code(), "invalid_image");
    let mut missing = dev_request(Vec::new(), 2);
    missing.source_png = None;
    let err = DevUpscaler
        .upscale(&missing, &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "missing_source");
}
