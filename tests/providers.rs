//! kiln with every provider pointed at local fakes in their wire formats
//! (OpenAI images and moderation, fal, a mail API, Twilio, an S3 bucket):
//! a generation succeeds after a 429 with every check recorded, a flagged
//! prompt and a flagged output image each end `content_blocked` with
//! nothing stored, a reference image and an upscale go through signed
//! links, the verification code reaches the registered email and phone,
//! and no request to the image, upscale or moderation fakes carries the
//! user's email, phone, id, referral code or token: providers get the
//! prompt and image links only.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use common::{Client, kiln, png};
use kiln_store::testing::TestDatabase;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{body_string_contains, method, path},
};

fn images(png: &[u8]) -> Value {
    json!({ "created": 1_700_000_000, "data": [{ "b64_json": BASE64.encode(png) }] })
}

fn verdict(flagged: bool) -> Value {
    json!({ "id": "modr-1", "model": "omni-moderation-latest", "results": [{
        "flagged": flagged,
        "categories": { "violence": flagged, "sexual": false },
        "category_scores": { "violence": if flagged { 0.98 } else { 0.01 }, "sexual": 0.001 },
    }]})
}

/// The fake: a calm image for most prompts, a "bad" image for one, a
/// flag for one prompt and for the bad image, one 429 before the first
/// generation.
async fn fake_openai(good: &[u8], bad: &[u8]) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after-ms", "100")
                .set_body_json(json!({"error": {"message": "Rate limit reached",
                    "type": "requests", "param": null, "code": "rate_limit_exceeded"}})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .and(body_string_contains("a storm of knives"))
        .respond_with(ResponseTemplate::new(200).set_body_json(images(bad)))
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(images(good)))
        .with_priority(3)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/moderations"))
        .and(body_string_contains("a forbidden massacre"))
        .respond_with(ResponseTemplate::new(200).set_body_json(verdict(true)))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/moderations"))
        .and(body_string_contains(BASE64.encode(bad)))
        .respond_with(ResponseTemplate::new(200).set_body_json(verdict(true)))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/moderations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(verdict(false)))
        .with_priority(3)
        .mount(&server)
        .await;
    // Edits with reference images, and a client's photo to start from.
    Mock::given(method("POST"))
        .and(path("/v1/images/edits"))
        .respond_with(ResponseTemplate::new(200).set_body_json(images(good)))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/photos/cat.png"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "image/png")
                .set_body_bytes(png(16, 16, 120)),
        )
        .mount(&server)
        .await;

    // fal's queue API: submitted, then completed at the first poll.
    let base = server.uri();
    Mock::given(method("POST"))
        .and(path("/fal-ai/esrgan"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "request_id": "req-1", "status": "IN_QUEUE", "queue_position": 0,
            "status_url": format!("{base}/fal-ai/esrgan/requests/req-1/status"),
            "response_url": format!("{base}/fal-ai/esrgan/requests/req-1"),
            "cancel_url": format!("{base}/fal-ai/esrgan/requests/req-1/cancel"),
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fal-ai/esrgan/requests/req-1/status"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "COMPLETED"})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fal-ai/esrgan/requests/req-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"image": {
            "url": format!("{base}/files/upscaled.png"),
            "width": 128, "height": 128, "content_type": "image/png"}})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/files/upscaled.png"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(png(128, 128, 200)))
        .mount(&server)
        .await;
    server
}

async fn enqueue(client: &Client, prompt: &str) -> Value {
    let r = client
        .post(
            "/v1/generations",
            json!({"prompt": prompt, "size": "1024x1024", "model": "gpt-image-1"}),
        )
        .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    client.wait_final(&id).await
}

const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
const MESSAGES: &str = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_at_fakes_and_none_learns_who_the_user_is() {
    let good = png(64, 64, 200);
    let bad = png(64, 64, 7);
    let fake = fake_openai(&good, &bad).await;
    // The mail API and Twilio on the same fake, at their own paths.
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "em_1"})))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "sid": "SM0123456789abcdef0123456789abcdef", "status": "queued"})))
        .mount(&fake)
        .await;
    let db = TestDatabase::postgres().await;
    let storage = tempfile::tempdir().unwrap();
    let k = kiln(&[])
        .database(&db.url)
        .env("KILN_STORAGE_ROOT", storage.path().display())
        .env("KILN_IMAGES_PROVIDER", "openai")
        .env("KILN_IMAGES_BASE_URL", fake.uri())
        .env("KILN_IMAGES_API_KEY", "sk-images-secret")
        .env("KILN_MODERATION_PROVIDER", "openai")
        .env("KILN_MODERATION_BASE_URL", fake.uri())
        .env("KILN_MODERATION_API_KEY", "sk-moderation-secret")
        .env("KILN_API_MODELS", "[gpt-image-1]")
        .env("KILN_API_DEFAULT_MODEL", "gpt-image-1")
        .env("KILN_API_SIZES", "[1024x1024]")
        .env("KILN_UPSCALE_PROVIDER", "fal")
        .env("KILN_UPSCALE_QUEUE_BASE_URL", fake.uri())
        .env("KILN_UPSCALE_API_KEY", "fal-key-secret")
        .env("KILN_UPSCALE_POLL_INTERVAL_MS", 50)
        .env("KILN_STORAGE_PUBLIC_BASE_URL", "https://kiln.example")
        // The fake's "photo host" is on 127.0.0.1 over http: allowed here
        // only, by the test-only settings.
        .env("KILN_REFERENCE_IMAGES_ALLOW_HTTP", true)
        .env("KILN_REFERENCE_IMAGES_ALLOW_PRIVATE_ADDRESSES", true)
        .env("KILN_EMAIL_PROVIDER", "http")
        .env("KILN_EMAIL_HTTP_BASE_URL", fake.uri())
        .env("KILN_EMAIL_HTTP_API_KEY", "re_mail_secret")
        .env("KILN_EMAIL_FROM", "noreply@kiln.example")
        .env("KILN_SMS_PROVIDER", "twilio")
        .env("KILN_SMS_BASE_URL", fake.uri())
        .env("KILN_SMS_ACCOUNT_SID", TWILIO_SID)
        .env("KILN_SMS_AUTH_TOKEN", "twilio-secret")
        .env("KILN_SMS_FROM", "+15005550006")
        .spawn();
    k.wait_http(k.http, "/readyz").await;
    let email = "private.person@example.com";
    let client = Client::signed_up(
        &common::FakeMail {
            kiln: &k,
            mail: &fake,
        },
        email,
    )
    .await;
    let phone = "+4915112345678";
    let r = reqwest::Client::new()
        .post(k.url("/v1/auth/register"))
        .json(&json!({"phone": phone, "password": "correct horse battery", "birth_date": "1990-01-01"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // Success, after one 429 the job retried.
    let job = enqueue(&client, "a lighthouse at dusk").await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 2, "the 429 was not retried: {job}");
    let url = job["result"]["images"][0]["url"].as_str().unwrap();
    let bytes = reqwest::get(k.url(url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        bytes.as_ref(),
        good.as_slice(),
        "the provider's image, as made"
    );

    // A flagged prompt: no generation request, nothing stored.
    let blocked_prompt = enqueue(&client, "a forbidden massacre").await;
    assert_eq!(blocked_prompt["state"], "failed");
    assert_eq!(blocked_prompt["error"]["code"], "content_blocked");
    assert_eq!(blocked_prompt["attempt"], 1);

    // A flagged output image: never stored, never shown.
    let blocked_image = enqueue(&client, "a storm of knives").await;
    assert_eq!(blocked_image["state"], "failed");
    assert_eq!(blocked_image["error"]["code"], "content_blocked");
    assert!(
        blocked_image["error"]["message"]
            .as_str()
            .unwrap()
            .contains("generated image")
    );
    assert_eq!(
        std::fs::read_dir(storage.path().join("images"))
            .unwrap()
            .count(),
        1,
        "only the allowed image is stored"
    );

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let history: Value = sqlx::query_scalar("SELECT errors FROM finished_jobs WHERE id = $1::uuid")
        .bind(job["id"].as_str().unwrap())
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(history[0]["code"], "rate_limit_exceeded", "{history}");
    assert_eq!(history[0]["permanent"], false);

    // Every decision is kept, one per check of every attempt: the prompt
    // twice (the 429 attempt, then the one that succeeded) and its image;
    // the blocked prompt; the third prompt and its blocked image.
    let decisions: Vec<(String, bool, Value)> = sqlx::query_as(
        "SELECT subject, allowed, categories FROM moderation_decisions ORDER BY created_at, id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let summary: Vec<(&str, bool)> = decisions.iter().map(|(s, a, _)| (s.as_str(), *a)).collect();
    assert_eq!(
        summary,
        vec![
            ("prompt", true),
            ("prompt", true),
            ("image", true),
            ("prompt", false),
            ("prompt", true),
            ("image", false),
        ]
    );
    assert_eq!(decisions[5].2, json!(["violence"]));

    // A reference image: fetched once, re-hosted, and the provider gets a
    // signed link to kiln's copy, not the client's URL.
    let photo = format!("{}/photos/cat.png", fake.uri());
    let r = client
        .post(
            "/v1/generations",
            json!({"prompt": "this cat as a lighthouse keeper", "size": "1024x1024",
                   "model": "gpt-image-1", "reference_image_urls": [photo]}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let edited = client
        .wait_final(r.json::<Value>().await.unwrap()["id"].as_str().unwrap())
        .await;
    assert_eq!(edited["state"], "succeeded", "{edited}");
    let edit = fake
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path() == "/v1/images/edits")
        .unwrap();
    let body: Value = serde_json::from_slice(&edit.body).unwrap();
    let link = body["images"][0]["image_url"].as_str().unwrap();
    assert!(
        link.starts_with("https://kiln.example/v1/files/refs/") && link.contains("signature="),
        "{link}"
    );
    assert!(!String::from_utf8_lossy(&edit.body).contains("/photos/cat.png"));
    let photo_fetches = fake
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/photos/cat.png")
        .count();
    assert_eq!(photo_fetches, 1, "the client's URL is fetched once");

    // An upscale through fal: the provider gets a signed link to our copy,
    // the result is moderated and stored as a new image.
    let r = client
        .post(
            "/v1/upscales",
            json!({"image_id": job["result"]["images"][0]["id"], "scale": 2}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let upscale = client
        .wait_final(r.json::<Value>().await.unwrap()["id"].as_str().unwrap())
        .await;
    assert_eq!(upscale["state"], "succeeded", "{upscale}");
    assert_eq!(upscale["result"]["image"]["width"], 128);
    let submitted = fake
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path() == "/fal-ai/esrgan")
        .unwrap();
    assert_eq!(submitted.headers["authorization"], "Key fal-key-secret");
    let body: Value = serde_json::from_slice(&submitted.body).unwrap();
    let link = body["image_url"].as_str().unwrap();
    assert!(
        link.starts_with("https://kiln.example/v1/files/images/") && link.contains("signature="),
        "{link}"
    );
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "only image_url and scale: {body}"
    );

    // The verification-code notice, by email to the email user and by SMS
    // to the phone user.
    let store = db.store().await.unwrap();
    use kiln_store::accounts::Identifier;
    let user_of = |id: Identifier| {
        let store = store.clone();
        async move { store.login_record(&id).await.unwrap().unwrap().user_id.0 }
    };
    let email_user = user_of(Identifier::Email(email.to_owned())).await;
    let phone_user = user_of(Identifier::Phone(phone.to_owned())).await;
    let code = kiln_jobs::Notice::VerificationCode {
        code: "730519".into(),
        minutes_valid: 10,
    };
    for job in [
        kiln_store::NewJob::of(&kiln_jobs::SendEmail {
            user_id: kiln_jobs::UserId(email_user),
            notice: code.clone(),
        }),
        kiln_store::NewJob::of(&kiln_jobs::SendSms {
            user_id: kiln_jobs::UserId(phone_user),
            notice: code.clone(),
        }),
    ] {
        let id = store.enqueue(job.unwrap()).await.unwrap().id;
        let done = common::wait_job(&store, id, "finished", |j| j.state.is_final()).await;
        assert_eq!(done.state, kiln_store::JobState::Succeeded, "{done:?}");
    }
    let requests = fake.received_requests().await.unwrap();
    // The sign-up codes went first; these are the notices enqueued here.
    let mail: Value = serde_json::from_slice(
        &requests
            .iter()
            .rfind(|r| r.url.path() == "/emails")
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(mail["to"], json!([email]));
    assert!(mail["text"].as_str().unwrap().contains("730519"));
    let sms = String::from_utf8_lossy(
        &requests
            .iter()
            .rfind(|r| r.url.path() == MESSAGES)
            .unwrap()
            .body,
    )
    .to_string();
    assert!(
        sms.contains("To=%2B4915112345678") && sms.contains("730519"),
        "{sms}"
    );

    // Nothing that names the user reached the provider.
    // Both accounts' ids and referral codes.
    let accounts: Vec<(String, String)> =
        sqlx::query_as("SELECT id::text, referral_code FROM users")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(accounts.len(), 2);
    let token = client.token.clone().unwrap();
    // Mail and SMS must carry the address; image, upscale and moderation
    // requests must carry nothing about the person.
    let to_ai = |r: &&wiremock::Request| r.url.path() != "/emails" && r.url.path() != MESSAGES;
    let ai_requests: Vec<_> = requests.iter().filter(to_ai).collect();
    assert!(ai_requests.len() >= 9, "{} requests", ai_requests.len());
    for r in ai_requests {
        let body = String::from_utf8_lossy(&r.body);
        let headers = format!("{:?}", r.headers);
        // The client's IP would travel in a forwarding header: none is sent.
        for forwarding in ["x-forwarded-for", "forwarded", "x-real-ip"] {
            assert!(!r.headers.contains_key(forwarding), "{forwarding} sent");
        }
        let personal = [
            email,
            "private.person",
            phone,
            "4915112345678",
            token.as_str(),
        ];
        let ids = accounts
            .iter()
            .flat_map(|(id, code)| [id.as_str(), code.as_str()]);
        for secret in personal.into_iter().chain(ids) {
            assert!(!body.contains(secret), "{secret} sent to {}", r.url.path());
            assert!(
                !headers.contains(secret),
                "{secret} in headers to {}",
                r.url.path()
            );
        }
        // GETs (fal polling, downloads) have no body.
        if let Ok(json) = serde_json::from_slice::<Value>(&r.body) {
            assert!(
                json.get("user").is_none(),
                "an OpenAI `user` field was sent"
            );
        }
    }
    // Keys never land in the log.
    let log = k.log_text();
    for key in [
        "sk-images-secret",
        "sk-moderation-secret",
        "fal-key-secret",
        "re_mail_secret",
        "twilio-secret",
        "730519",
    ] {
        assert!(!log.contains(key), "{key} in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_live_in_a_private_s3_bucket_and_are_served_by_signed_links() {
    let bucket = common::FakeBucket::default();
    let s3 = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(bucket.clone())
        .mount(&s3)
        .await;
    let k = kiln(&[])
        .env("KILN_STORAGE_BACKEND", "s3")
        .env("KILN_STORAGE_S3_BUCKET", "kiln-images")
        .env("KILN_STORAGE_S3_REGION", "oss-cn-hangzhou")
        .env("KILN_STORAGE_S3_ENDPOINT", s3.uri())
        .env("KILN_STORAGE_S3_ACCESS_KEY_ID", "LTAI-test")
        .env("KILN_STORAGE_S3_SECRET_ACCESS_KEY", "oss-secret")
        .env("KILN_STORAGE_S3_VIRTUAL_HOSTED_STYLE", false)
        .env("KILN_STORAGE_S3_ALLOW_HTTP", true)
        .spawn();
    k.wait_http(k.http, "/readyz").await;
    let client = Client::signed_up(&k, "bucketed@example.com").await;
    let r = client
        .post(
            "/v1/generations",
            json!({"prompt": "a lantern", "size": "256x256"}),
        )
        .await;
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = client.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let image = &job["result"]["images"][0];

    // The bytes went to the bucket, signed; kiln serves them by its link.
    let key = format!("/kiln-images/images/{}.png", image["id"].as_str().unwrap());
    let stored = bucket.object(&key).expect("object in the bucket");
    let put = s3
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.method.as_str() == "PUT")
        .unwrap();
    assert!(
        put.headers["authorization"]
            .to_str()
            .unwrap()
            .starts_with("AWS4-HMAC-SHA256 Credential=LTAI-test/")
    );
    let served = reqwest::get(k.url(image["url"].as_str().unwrap()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(served.as_ref(), stored.as_slice());
    assert!(!k.log_text().contains("oss-secret"));
}
