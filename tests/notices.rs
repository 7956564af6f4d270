//! `send_email` and `send_sms` run by the real binary against local fakes
//! of a Resend-style mail API and Twilio: the verification-code notice
//! reaches the registered address and number, the payload never held them,
//! a Twilio "invalid number" fails at once and a 429 is retried.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{kiln, wait_job};
use kiln_jobs::{Notice, SendEmail, SendSms};
use kiln_store::{ConnectOptions, JobState, NewJob, testing::TestDatabase};
use serde_json::{Value, json};
use uuid::Uuid;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{body_string_contains, header, method, path},
};

const SID: &str = "AC0123456789abcdef0123456789abcdef";

async fn register(base: &str, body: Value) -> Uuid {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/auth/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    r.json::<Value>().await.unwrap()["user_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_codes_reach_the_registered_email_and_phone() {
    let mail = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/emails"))
        .and(header("authorization", "Bearer re_test_key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "em_1"})))
        .expect(1)
        .mount(&mail)
        .await;
    let twilio = MockServer::start().await;
    let messages = format!("/2010-04-01/Accounts/{SID}/Messages.json");
    Mock::given(method("POST"))
        .and(path(messages.clone()))
        .and(body_string_contains("To=%2B15005550001"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "code": 21211, "message": "The 'To' number +15005550001 is not a valid phone number.",
            "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400})))
        .mount(&twilio)
        .await;
    Mock::given(method("POST"))
        .and(path(messages.clone()))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({"code": 20429, "message": "Too Many Requests",
                    "more_info": "https://www.twilio.com/docs/errors/20429", "status": 429})),
        )
        .up_to_n_times(1)
        .mount(&twilio)
        .await;
    Mock::given(method("POST"))
        .and(path(messages))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "sid": "SM0123456789abcdef0123456789abcdef", "status": "queued"})))
        .mount(&twilio)
        .await;

    let db = TestDatabase::postgres().await;
    let k = kiln(&[])
        .database(&db.url)
        .env("KILN_EMAIL_PROVIDER", "http")
        .env("KILN_EMAIL_HTTP_BASE_URL", mail.uri())
        .env("KILN_EMAIL_HTTP_API_KEY", "re_test_key")
        .env("KILN_EMAIL_FROM", "Kiln <noreply@kiln.example>")
        .env("KILN_EMAIL_PRODUCT_NAME", "Pixelry")
        .env("KILN_SMS_PROVIDER", "twilio")
        .env("KILN_SMS_BASE_URL", twilio.uri())
        .env("KILN_SMS_ACCOUNT_SID", SID)
        .env("KILN_SMS_AUTH_TOKEN", "twilio-secret-token")
        .env("KILN_SMS_FROM", "+15005550006")
        .spawn();
    k.wait_http(k.http, "/readyz").await;
    let base = k.url("");
    let by_email = register(
        &base,
        json!({"email": "ada@example.com", "password": "correct horse battery", "birth_date": "1990-01-01"}),
    )
    .await;
    let by_phone = register(
        &base,
        json!({"phone": "+4915112345678", "password": "correct horse battery", "birth_date": "1990-01-01"}),
    )
    .await;
    let bad_phone = register(
        &base,
        json!({"phone": "+15005550001", "password": "correct horse battery", "birth_date": "1990-01-01"}),
    )
    .await;

    let store = kiln_store::connect(&ConnectOptions {
        url: db.url.clone(),
        max_connections: 2,
        wait: false,
        session_cache: std::time::Duration::ZERO,
    })
    .await
    .unwrap();
    let code = Notice::VerificationCode {
        code: "482913".into(),
        minutes_valid: 10,
    };
    let email_job = store
        .enqueue(
            NewJob::of(&SendEmail {
                user_id: kiln_jobs::UserId(by_email),
                notice: code.clone(),
            })
            .unwrap(),
        )
        .await
        .unwrap()
        .id;
    let sms_job = store
        .enqueue(
            NewJob::of(&SendSms {
                user_id: kiln_jobs::UserId(by_phone),
                notice: code.clone(),
            })
            .unwrap(),
        )
        .await
        .unwrap()
        .id;
    let invalid_job = store
        .enqueue(
            NewJob::of(&SendSms {
                user_id: kiln_jobs::UserId(bad_phone),
                notice: code.clone(),
            })
            .unwrap(),
        )
        .await
        .unwrap()
        .id;
    let no_phone_job = store
        .enqueue(
            NewJob::of(&SendSms {
                user_id: kiln_jobs::UserId(by_email),
                notice: code,
            })
            .unwrap(),
        )
        .await
        .unwrap()
        .id;

    let finished = |j: &kiln_store::JobRecord| j.state.is_final();
    let email = wait_job(&store, email_job, "finished", finished).await;
    assert_eq!(email.state, JobState::Succeeded, "{email:?}");
    let sms = wait_job(&store, sms_job, "finished", finished).await;
    assert_eq!(sms.state, JobState::Succeeded, "{sms:?}");
    assert_eq!(sms.attempt, 2, "the 429 was retried");
    let invalid = wait_job(&store, invalid_job, "finished", finished).await;
    assert_eq!(invalid.state, JobState::Failed);
    assert_eq!(invalid.attempt, 1, "an invalid number is not retried");
    assert_eq!(invalid.errors[0].code, "invalid_phone");
    let no_phone = wait_job(&store, no_phone_job, "finished", finished).await;
    assert_eq!(no_phone.state, JobState::Failed);
    assert_eq!(no_phone.errors[0].code, "no_phone");

    // The notice reached the registered address and number.
    let sent = &mail.received_requests().await.unwrap()[0];
    let body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(body["to"], json!(["ada@example.com"]));
    assert!(body["subject"].as_str().unwrap().contains("Pixelry"));
    assert!(body["text"].as_str().unwrap().contains("482913"));
    let texts = twilio.received_requests().await.unwrap();
    let delivered = String::from_utf8_lossy(&texts.last().unwrap().body).to_string();
    assert!(delivered.contains("To=%2B4915112345678"), "{delivered}");
    assert!(delivered.contains("482913"), "{delivered}");

    // The queue never held the address or number; the log never shows them.
    for job in [&email, &sms, &invalid] {
        let payload = job.payload.to_string();
        assert!(!payload.contains("ada@example.com") && !payload.contains("+49151"));
    }
    let log = k.log_text();
    for secret in [
        "ada@example.com",
        "+4915112345678",
        "482913",
        "twilio-secret-token",
        "re_test_key",
    ] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}
