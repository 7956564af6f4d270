//! Policy versions, the pending notice, security notices and the account's
//! language, through the real router in process.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use axum::http::{Method, StatusCode};
use chrono::{DateTime, TimeDelta, Utc};
use kiln_api::testing::TestApi;
use kiln_store::accounts::Identifier;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

fn at(days: i64) -> String {
    (Utc::now() + TimeDelta::days(days)).to_rfc3339()
}

fn summary() -> Value {
    json!({"en": "Access logs are kept six months.", "zh-Hans": "访问日志保存六个月。", "zh-Hant": "存取日誌保存六個月。"})
}

async fn with_operator(api: &TestApi) -> String {
    let olga = api.signed_up("olga@example.com", PASSWORD).await;
    api.store()
        .set_operator(&Identifier::Email("olga@example.com".into()), true)
        .await
        .unwrap();
    olga
}

#[tokio::test]
async fn a_policy_version_is_announced_at_least_seven_days_ahead_and_pending_until_acknowledged() {
    let api = TestApi::sqlite().await.unwrap();
    let ada = api.signed_up("ada@example.com", PASSWORD).await;
    let olga = with_operator(&api).await;
    let publish = |body: Value, token: String| {
        let api = &api;
        async move {
            api.request(
                Method::POST,
                "/admin/v1/policy-versions",
                Some(body),
                Some(&token),
            )
            .await
        }
    };

    // Only operators publish.
    let r = publish(
        json!({"version": "2027-01", "effective_at": at(8), "summary": summary()}),
        ada.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Six days ahead is too soon; a summary without Chinese is refused;
    // so is a name that cannot be a key.
    for body in [
        json!({"version": "2027-01", "effective_at": at(6), "summary": summary()}),
        json!({"version": "2027-01", "effective_at": at(8), "summary": {"en": "only English"}}),
        json!({"version": "2027 01/x", "effective_at": at(8), "summary": summary()}),
        json!({"version": "2027-01", "effective_at": at(8), "summary": {"en": " ", "zh-Hans": "x"}}),
        json!({"version": "2027-01", "effective_at": "next week", "summary": summary()}),
    ] {
        let r = publish(body.clone(), olga.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(r.json()["code"], "invalid_input");
    }
    assert_eq!(
        api.request(Method::GET, "/v1/policy", None, None)
            .await
            .json(),
        json!({"current": null, "pending": null})
    );

    let r = publish(
        json!({"version": "2027-01", "effective_at": at(8), "summary": summary()}),
        olga.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
    let published = r.json();
    assert_eq!(published["version"], "2027-01");
    let job = api
        .store()
        .get(published["job_id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.kind, "notify_users");
    let r = publish(
        json!({"version": "2027-01", "effective_at": at(9), "summary": summary()}),
        olga.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    // Anyone reads the policy: nothing current yet, this one pending.
    let policy = api
        .request(Method::GET, "/v1/policy", None, None)
        .await
        .json();
    assert_eq!(policy["current"], Value::Null);
    assert_eq!(policy["pending"]["version"], "2027-01");
    assert_eq!(policy["pending"]["summary"], summary());

    // Ada signed up before it: pending until she acknowledges it.
    let me = api
        .request(Method::GET, "/v1/me", None, Some(&ada))
        .await
        .json();
    assert_eq!(me["pending_policy"]["version"], "2027-01", "{me}");
    let effective: DateTime<Utc> = me["pending_policy"]["effective_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(effective > Utc::now() + TimeDelta::days(7));
    let ack = |version: &str| {
        let (api, ada) = (&api, ada.clone());
        let body = json!({ "version": version });
        async move {
            api.request(Method::POST, "/v1/me/policy-ack", Some(body), Some(&ada))
                .await
        }
    };
    let r = ack("1999-01").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(ack("2027-01").await.status, StatusCode::NO_CONTENT);
    let me = api
        .request(Method::GET, "/v1/me", None, Some(&ada))
        .await
        .json();
    assert_eq!(me["pending_policy"], Value::Null, "{me}");
    let log = api
        .request(Method::GET, "/v1/me/access-log", None, Some(&ada))
        .await
        .json();
    assert_eq!(log["entries"][0]["event"], "policy_acknowledged", "{log}");

    // Whoever signs up now agreed to it on signing up.
    let bob = api.signed_up("bob@example.com", PASSWORD).await;
    let me = api
        .request(Method::GET, "/v1/me", None, Some(&bob))
        .await
        .json();
    assert_eq!(me["pending_policy"], Value::Null);
    // The operator's act is in their own log.
    let log = api
        .request(Method::GET, "/v1/me/access-log", None, Some(&olga))
        .await
        .json();
    assert_eq!(log["entries"][0]["event"], "policy_published", "{log}");
}

#[tokio::test]
async fn a_security_notice_goes_to_the_named_accounts_or_to_all() {
    let api = TestApi::sqlite().await.unwrap();
    let ada = api.signed_up("ada@example.com", PASSWORD).await;
    let olga = with_operator(&api).await;
    let ada_id = api
        .request(Method::GET, "/v1/me", None, Some(&ada))
        .await
        .json()["id"]
        .clone();
    let send = |body: Value, token: String| {
        let api = &api;
        async move {
            api.request(
                Method::POST,
                "/admin/v1/notices/security",
                Some(body),
                Some(&token),
            )
            .await
        }
    };
    let text = json!({"en": "Incident", "zh-Hans": "事件"});

    let r = send(
        json!({"subject": text, "body": text, "all": true}),
        ada.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    for body in [
        json!({"subject": text, "body": text}),
        json!({"subject": text, "body": text, "all": true, "user_ids": [ada_id]}),
        json!({"subject": text, "body": text, "user_ids": []}),
        json!({"subject": text, "body": text, "all": false}),
        json!({"subject": {"en": "x".repeat(201)}, "body": text, "all": true}),
        json!({"subject": "not localized", "body": text, "all": true}),
    ] {
        let r = send(body.clone(), olga.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }

    let r = send(
        json!({"subject": text, "body": text, "user_ids": [ada_id]}),
        olga.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json());
    let notice = r.json();
    assert_eq!(notice["all"], false);
    assert_eq!(notice["job_state"], "available");
    assert_eq!(notice["recipients"], 0);
    let created: DateTime<Utc> = notice["created_at"].as_str().unwrap().parse().unwrap();
    assert!(Utc::now() - created < TimeDelta::minutes(1));

    let path = format!(
        "/admin/v1/notices/security/{}",
        notice["id"].as_str().unwrap()
    );
    let shown = api.request(Method::GET, &path, None, Some(&olga)).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json()["subject"], text);
    let r = api.request(Method::GET, &path, None, Some(&ada)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .request(
            Method::GET,
            "/admin/v1/notices/security/00000000-0000-0000-0000-000000000000",
            None,
            Some(&olga),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = send(
        json!({"subject": text, "body": text, "all": true}),
        olga.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.json()["all"], true);
    let log = api
        .request(Method::GET, "/v1/me/access-log", None, Some(&olga))
        .await
        .json();
    assert_eq!(log["entries"][0]["event"], "security_notice_sent", "{log}");
}

#[tokio::test]
async fn an_account_chooses_the_language_of_its_notices() {
    let api = TestApi::sqlite().await.unwrap();
    let ada = api.signed_up("ada@example.com", PASSWORD).await;
    let me = api
        .request(Method::GET, "/v1/me", None, Some(&ada))
        .await
        .json();
    assert_eq!(me["locale"], "en");

    let patch = |body: Value| {
        let (api, ada) = (&api, ada.clone());
        async move {
            api.request(Method::PATCH, "/v1/me", Some(body), Some(&ada))
                .await
        }
    };
    let r = patch(json!({"locale": "zh-Hant"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["locale"], "zh-Hant");
    assert_eq!(
        api.store()
            .contacts(serde_json::from_value(me["id"].clone()).unwrap())
            .await
            .unwrap()
            .unwrap()
            .locale,
        kiln_jobs::Locale::ZhHant
    );
    for body in [
        json!({"locale": "fr"}),
        json!({"locale": "zh-Hant", "code": "123456"}),
        json!({}),
    ] {
        let r = patch(body.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }

    // Chosen at sign-up too.
    let r = api
        .request(
            Method::POST,
            "/v1/auth/register",
            Some(json!({"email": "lin@example.com", "password": PASSWORD, "birth_date": "1990-01-01", "locale": "zh-Hans"})),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let id = api
        .store()
        .login_record(&Identifier::Email("lin@example.com".into()))
        .await
        .unwrap()
        .unwrap()
        .user_id;
    let contacts = api.store().contacts(id).await.unwrap().unwrap();
    assert_eq!(contacts.locale, kiln_jobs::Locale::ZhHans);
    let r = api
        .request(
            Method::POST,
            "/v1/auth/register",
            Some(json!({"email": "max@example.com", "password": PASSWORD, "birth_date": "1990-01-01", "locale": "de"})),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_webhook_secret_is_shown_once_sealed_at_rest_and_replaced_by_the_next() {
    let db = kiln_store::testing::TestDatabase::sqlite();
    let url = db.url.clone();
    let api = TestApi::new(db.store().await.unwrap()).keeping(db);
    let ada = api.signed_up("ada@example.com", PASSWORD).await;
    let r = api
        .request(Method::POST, "/v1/me/webhook-secret", None, None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let rotate = || async {
        let r = api
            .request(Method::POST, "/v1/me/webhook-secret", None, Some(&ada))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        r.json()["secret"].as_str().unwrap().to_owned()
    };
    let first = rotate().await;
    let second = rotate().await;
    assert_ne!(first, second);
    for secret in [&first, &second] {
        // A Standard Webhooks secret: whsec_ and 32 bytes of base64.
        let key = kiln_providers::payments::signature::standard_secret(secret).unwrap();
        assert_eq!(key.len(), 32);
    }
    let me = api
        .request(Method::GET, "/v1/me", None, Some(&ada))
        .await
        .json();
    let user: kiln_jobs::UserId = serde_json::from_value(me["id"].clone()).unwrap();
    assert_eq!(
        api.store().webhook_secret(user).await.unwrap().as_deref(),
        Some(second.as_str()),
        "the newest one signs"
    );
    // Sealed at rest: the database file never holds it in the clear.
    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = path.split('?').next().unwrap();
    let mut file = std::fs::read(path).unwrap();
    // Recent writes may still be in the write-ahead log.
    file.extend(std::fs::read(format!("{path}-wal")).unwrap_or_default());
    assert!(file.len() > 4096, "read the database: {path}");
    let sealed_somewhere = file.windows(3).any(|w| w == b"k1:");
    assert!(sealed_somewhere, "the sealed secret is in the file");
    let plain = second.trim_start_matches("whsec_");
    assert!(!file.windows(plain.len()).any(|w| w == plain.as_bytes()));
    let log = api
        .request(Method::GET, "/v1/me/access-log", None, Some(&ada))
        .await
        .json();
    assert_eq!(
        log["entries"][0]["event"], "webhook_secret_rotated",
        "{log}"
    );
}
