//! `send_email` and `send_sms` run by the real binary against local fakes
//! of a Resend-style mail API and Twilio: the sign-up code reaches the
//! registered address and number (and verifies them), notices reach them
//! too, the payload never held them, a Twilio "invalid number" fails at
//! once and a 429 is retried.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{Codes, kiln, wait_job};
use kiln_jobs::{Notice, SendEmail, SendSms};
use kiln_store::{ConnectOptions, JobState, NewJob, accounts::Identifier, testing::TestDatabase};
use serde_json::{Value, json};
use uuid::Uuid;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{body_string_contains, header, method, path},
};

const SID: &str = "AC0123456789abcdef0123456789abcdef";

/// Registers, and reads the new account's id from the database (the
/// answer names no account).
async fn register(base: &str, store: &kiln_store::Store, body: Value) -> Uuid {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/auth/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let identifier = match (body["email"].as_str(), body["phone"].as_str()) {
        (Some(email), _) => Identifier::Email(email.to_owned()),
        (_, Some(phone)) => Identifier::Phone(phone.to_owned()),
        _ => panic!("no address in {body}"),
    };
    store
        .login_record(&identifier)
        .await
        .unwrap()
        .unwrap()
        .user_id
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_codes_reach_the_registered_email_and_phone() {
    let mail = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/emails"))
        .and(header("authorization", "Bearer re_test_key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "em_1"})))
        // The sign-up code, then the notice this test enqueues.
        .expect(2)
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
    let store = kiln_store::connect(&ConnectOptions {
        url: db.url.clone(),
        direct_url: None,
        pooler: Default::default(),
        max_connections: 2,
        wait: false,
        session_cache: std::time::Duration::ZERO,
        pii: kiln_store::testing::test_pii(),
    })
    .await
    .unwrap();
    let by_email = register(
        &base,
        &store,
        json!({"email": "ada@example.com", "password": "correct horse battery", "birth_date": "1990-01-01"}),
    )
    .await;
    let by_phone = register(
        &base,
        &store,
        json!({"phone": "+4915112345678", "password": "correct horse battery", "birth_date": "1990-01-01"}),
    )
    .await;
    let bad_phone = register(
        &base,
        &store,
        json!({"phone": "+15005550001", "password": "correct horse battery", "birth_date": "1990-01-01"}),
    )
    .await;

    // The sign-up codes arrive: by email at the mail API, by SMS at Twilio
    // (after its one 429, retried); each verifies its account.
    let email_code = common::FakeMail {
        kiln: &k,
        mail: &mail,
    }
    .latest_code("ada@example.com")
    .await;
    let to_phone =
        |r: &wiremock::Request| String::from_utf8_lossy(&r.body).contains("To=%2B4915112345678");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let phone_code = loop {
        let sent: Vec<String> = twilio
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| to_phone(r))
            .map(|r| String::from_utf8_lossy(&r.body).to_string())
            .collect();
        if sent.len() >= 2 {
            let body = sent[1].split_once("Body=").unwrap().1;
            assert_eq!(sent[0], sent[1], "the retry sent the same message");
            break body[..6].to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no code by SMS: {sent:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert!(
        phone_code.chars().all(|c| c.is_ascii_digit()),
        "{phone_code}"
    );
    let http = reqwest::Client::new();
    for (field, address, code) in [
        ("email", "ada@example.com", &email_code),
        ("phone", "+4915112345678", &phone_code),
    ] {
        let r = http
            .post(format!("{base}/v1/auth/verify"))
            .json(&json!({field: address, "code": code}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "{field}: {}",
            r.text().await.unwrap_or_default()
        );
        let r = http
            .post(format!("{base}/v1/auth/login"))
            .json(&json!({field: address, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{field}");
    }

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
    let invalid = wait_job(&store, invalid_job, "finished", finished).await;
    assert_eq!(invalid.state, JobState::Failed);
    assert_eq!(invalid.attempt, 1, "an invalid number is not retried");
    assert_eq!(invalid.errors[0].code, "invalid_phone");
    let no_phone = wait_job(&store, no_phone_job, "finished", finished).await;
    assert_eq!(no_phone.state, JobState::Failed);
    assert_eq!(no_phone.errors[0].code, "no_phone");

    // The notice reached the registered address and number.
    let sent = mail.received_requests().await.unwrap();
    let sent = sent.last().unwrap();
    let body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(body["to"], json!(["ada@example.com"]));
    assert!(body["subject"].as_str().unwrap().contains("Pixelry"));
    assert!(body["text"].as_str().unwrap().contains("482913"));
    let texts = twilio.received_requests().await.unwrap();
    let delivered = texts
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).to_string())
        .rfind(|body| body.contains("To=%2B4915112345678"))
        .unwrap();
    assert!(delivered.contains("482913"), "{delivered}");

    // The queue never held the address, the number or a sign-up code; the
    // log never shows them.
    for job in [&email, &sms, &invalid] {
        let payload = job.payload.to_string();
        assert!(!payload.contains("ada@example.com") && !payload.contains("+49151"));
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let payloads: Vec<(String,)> = sqlx::query_as(
        "SELECT payload::text FROM jobs UNION ALL SELECT payload::text FROM finished_jobs",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(payloads.len() >= 7, "{payloads:?}");
    for (payload,) in &payloads {
        for secret in [&email_code, &phone_code] {
            assert!(
                !payload.contains(secret.as_str()),
                "a code in the queue: {payload}"
            );
        }
    }
    let log = k.log_text();
    for secret in [
        "ada@example.com",
        "+4915112345678",
        "482913",
        email_code.as_str(),
        phone_code.as_str(),
        "twilio-secret-token",
        "re_test_key",
    ] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}
