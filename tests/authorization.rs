//! The authorization matrix: every operation of the OpenAPI document,
//! asked by an anonymous client, the owner of the resources it names
//! (Ada), another user (Bob), a user who restricted their account (Rex)
//! and an operator (Olga), answers exactly the status it should. Another
//! user's resources answer 404, as if they did not exist; a restricted
//! account reads but starts nothing (403); the operator role grants
//! nothing on users' routes. The test fails when the document gains an
//! operation the matrix does not cover.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::http::Method;
use kiln_api::testing::TestApi;
use kiln_store::accounts::Identifier;
use kiln_store::generations::ImageRecord;
use serde_json::{Value, json};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery";

/// Who asks: anonymous, Ada (the owner), Bob, Rex (restricted), Olga
/// (operator).
const WHO: [&str; 5] = ["anonymous", "ada", "bob", "rex", "olga"];

struct Case {
    method: Method,
    /// As the OpenAPI document names it.
    template: &'static str,
    /// The status each of [`WHO`] gets.
    expect: [u16; 5],
}

fn case(method: Method, template: &'static str, expect: [u16; 5]) -> Case {
    Case {
        method,
        template,
        expect,
    }
}

/// Anonymous 401, users 403, the operator 200.
const OPERATOR_ONLY: [u16; 5] = [401, 403, 403, 403, 200];

/// Every operation, in the order they are asked: what changes an account
/// (logout, restriction, deleting the image and the accounts) comes where it cannot
/// disturb the rest, and the owner asks last.
fn matrix() -> Vec<Case> {
    use Method as M;
    vec![
        case(M::GET, "/healthz", [200; 5]),
        case(M::GET, "/readyz", [200; 5]),
        case(M::POST, "/v1/auth/register", [202; 5]),
        case(M::POST, "/v1/auth/verify", [422; 5]),
        case(M::POST, "/v1/auth/resend", [202; 5]),
        case(M::POST, "/v1/auth/login", [200; 5]),
        case(M::GET, "/v1/credits", [401, 200, 200, 200, 200]),
        case(M::GET, "/v1/credits/packs", [200; 5]),
        case(M::POST, "/v1/credits/checkout", [401, 201, 201, 201, 201]),
        // Signed by the merchant, not by a token: unsigned is refused.
        case(M::POST, "/v1/webhooks/payments", [400; 5]),
        case(M::POST, "/v1/generations", [401, 202, 202, 403, 202]),
        case(M::POST, "/v1/generations/batch", [401, 202, 202, 403, 202]),
        case(M::POST, "/v1/upscales", [401, 202, 404, 403, 404]),
        case(M::GET, "/v1/jobs", [401, 200, 200, 200, 200]),
        case(M::GET, "/v1/jobs/{id}", [401, 200, 404, 404, 404]),
        case(M::POST, "/v1/jobs/{id}/cancel", [401, 200, 404, 404, 404]),
        // After the cancel: the job is final, so its stream says so and ends.
        case(M::GET, "/v1/jobs/{id}/events", [401, 200, 404, 404, 404]),
        case(
            M::GET,
            "/v1/jobs/{id}/deliveries",
            [401, 200, 404, 404, 404],
        ),
        case(M::GET, "/v1/images", [401, 200, 200, 200, 200]),
        case(M::GET, "/v1/images/{id}", [401, 200, 404, 404, 404]),
        // A signed link is the capability; a token adds nothing.
        case(M::GET, "/v1/files/{key}", [200; 5]),
        case(M::DELETE, "/v1/images/{id}", [401, 204, 404, 404, 404]),
        case(M::GET, "/v1/me", [401, 200, 200, 200, 200]),
        case(M::PATCH, "/v1/me", [401, 202, 202, 202, 202]),
        case(M::GET, "/v1/me/access-log", [401, 200, 200, 200, 200]),
        case(M::POST, "/v1/me/webhook-secret", [401, 201, 201, 201, 201]),
        case(
            M::GET,
            "/admin/v1/subject-requests",
            [401, 403, 403, 403, 200],
        ),
        case(M::GET, "/admin/v1/exports", [401, 403, 403, 403, 200]),
        case(M::GET, "/v1/policy", [200; 5]),
        case(M::POST, "/v1/me/policy-ack", [401, 204, 204, 204, 204]),
        case(
            M::POST,
            "/admin/v1/policy-versions",
            [401, 403, 403, 403, 201],
        ),
        case(
            M::POST,
            "/admin/v1/notices/security",
            [401, 403, 403, 403, 202],
        ),
        case(
            M::GET,
            "/admin/v1/notices/security/{id}",
            [401, 403, 403, 403, 200],
        ),
        // The operators' queue and job API: operators only. Each action
        // has a job of its own that it applies to (see `World::request`).
        case(M::GET, "/admin/v1/queues", OPERATOR_ONLY),
        case(M::POST, "/admin/v1/queues/{queue}/pause", OPERATOR_ONLY),
        case(M::POST, "/admin/v1/queues/{queue}/resume", OPERATOR_ONLY),
        case(
            M::PUT,
            "/admin/v1/queues/{queue}/concurrency",
            OPERATOR_ONLY,
        ),
        case(M::GET, "/admin/v1/jobs", OPERATOR_ONLY),
        case(M::GET, "/admin/v1/jobs/{id}", OPERATOR_ONLY),
        case(M::POST, "/admin/v1/jobs/{id}/retry", OPERATOR_ONLY),
        case(M::POST, "/admin/v1/jobs/{id}/discard", OPERATOR_ONLY),
        case(M::POST, "/admin/v1/jobs/{id}/cancel", OPERATOR_ONLY),
        case(M::POST, "/admin/v1/jobs/bulk", OPERATOR_ONLY),
        case(M::GET, "/admin/v1/workers", OPERATOR_ONLY),
        // Open to a restricted account (the right of access); Ada's own
        // export is still waiting (no worker here), so hers is refused:
        // one at a time.
        case(M::POST, "/v1/me/exports", [401, 409, 202, 202, 202]),
        case(M::GET, "/v1/me/exports/{id}", [401, 200, 404, 404, 404]),
        // Everyone here signed up a moment ago: the sign-up's code went
        // to each address, and the next must wait (`api.code_resend_interval_secs`).
        case(M::POST, "/v1/me/deletion-code", [401, 429, 429, 429, 429]),
        case(M::POST, "/v1/auth/logout", [401, 204, 204, 204, 204]),
        case(M::POST, "/v1/me/restriction", [401, 204, 204, 204, 204]),
        case(M::DELETE, "/v1/me/restriction", [401, 204, 204, 204, 204]),
        // Each deletes its own account: last of all.
        case(M::DELETE, "/v1/me", [401, 202, 202, 202, 202]),
    ]
}

/// The operations the OpenAPI document lists.
fn documented(api: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in api["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

struct World {
    api: TestApi,
    /// Each principal's address (none for anonymous) and token.
    tokens: [Option<String>; 5],
    job: Uuid,
    image: Uuid,
    export: Uuid,
    /// A security notice, as an operator sent it.
    notice: Uuid,
    file: String,
    fresh: AtomicU32,
    /// Jobs with no owner for the operators' retry (a discarded one),
    /// discard and cancel (waiting ones).
    system_jobs: [Uuid; 3],
}

/// A published policy version everyone may acknowledge.
const POLICY: &str = "2027-01";

impl World {
    /// An address never used before, for sign-ups and corrections.
    fn fresh(&self) -> String {
        format!(
            "new{}@example.com",
            self.fresh.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A token of its own for the principal (logout revokes the one used).
    async fn login(&self, who: usize) -> Option<String> {
        self.tokens[who].as_ref()?;
        let body = json!({"email": format!("{}@example.com", WHO[who]), "password": PASSWORD});
        let r = self
            .api
            .request(Method::POST, "/v1/auth/login", Some(body), None)
            .await;
        Some(r.json()["token"].as_str().unwrap().to_owned())
    }

    /// The concrete request of an operation.
    fn request(&self, c: &Case) -> (String, Option<Value>) {
        let ada = || "ada@example.com".to_owned();
        match (c.method.as_str(), c.template) {
            ("POST", "/v1/auth/register") => (
                c.template.into(),
                Some(
                    json!({"email": self.fresh(), "password": PASSWORD, "birth_date": "1990-01-01"}),
                ),
            ),
            ("POST", "/v1/auth/verify") => (
                c.template.into(),
                Some(json!({"email": self.fresh(), "code": "123456"})),
            ),
            ("POST", "/v1/auth/resend") => {
                (c.template.into(), Some(json!({"email": self.fresh()})))
            }
            ("POST", "/v1/auth/login") => (
                c.template.into(),
                Some(json!({"email": ada(), "password": PASSWORD})),
            ),
            ("POST", "/v1/credits/checkout") => (c.template.into(), Some(json!({"pack": "small"}))),
            ("POST", "/v1/webhooks/payments") => {
                (c.template.into(), Some(json!({"type": "order.paid"})))
            }
            ("POST", "/v1/generations") => (
                c.template.into(),
                Some(json!({"prompt": "a kiln at night"})),
            ),
            ("POST", "/v1/generations/batch") => (
                c.template.into(),
                Some(json!({"items": [{"prompt": "a kiln at night"}]})),
            ),
            ("POST", "/v1/upscales") => (c.template.into(), Some(json!({"image_id": self.image}))),
            ("PATCH", "/v1/me") => (c.template.into(), Some(json!({"email": self.fresh()}))),
            ("DELETE", "/v1/me") => (c.template.into(), Some(json!({"password": PASSWORD}))),
            ("POST", "/v1/me/policy-ack") => (c.template.into(), Some(json!({"version": POLICY}))),
            ("POST", "/admin/v1/policy-versions") => (
                c.template.into(),
                Some(json!({
                    "version": "2027-matrix",
                    "effective_at": (chrono::Utc::now() + chrono::TimeDelta::days(8)).to_rfc3339(),
                    "summary": {"en": "What changes", "zh-Hans": "变更"},
                })),
            ),
            ("POST", "/admin/v1/notices/security") => (
                c.template.into(),
                Some(
                    json!({"subject": {"en": "Incident"}, "body": {"en": "Details"}, "all": true}),
                ),
            ),
            (_, t) if t.starts_with("/admin/v1/queues/") => (
                t.replace("{queue}", "default"),
                t.ends_with("/concurrency").then(|| json!({"limit": null})),
            ),
            ("POST", "/admin/v1/jobs/bulk") => (
                c.template.into(),
                Some(json!({"action": "retry", "filter": {"queue": "default"}})),
            ),
            (_, t) if t.starts_with("/admin/v1/jobs/{id}/") => {
                let [retry, discard, cancel] = self.system_jobs;
                let id = match t.rsplit('/').next() {
                    Some("retry") => retry,
                    Some("discard") => discard,
                    _ => cancel,
                };
                (t.replace("{id}", &id.to_string()), None)
            }
            ("GET", "/admin/v1/jobs/{id}") => {
                (c.template.replace("{id}", &self.job.to_string()), None)
            }
            (_, "/v1/files/{key}") => (self.file.clone(), None),
            (_, t) => (
                t.replace(
                    "{id}",
                    &match t {
                        t if t.starts_with("/v1/jobs/") => self.job.to_string(),
                        t if t.starts_with("/v1/me/exports/") => self.export.to_string(),
                        t if t.starts_with("/admin/v1/notices/") => self.notice.to_string(),
                        _ => self.image.to_string(),
                    },
                ),
                None,
            ),
        }
    }
}

async fn world() -> World {
    let api = TestApi::sqlite().await.unwrap();
    let mut tokens: [Option<String>; 5] = Default::default();
    for (who, name) in WHO.iter().enumerate().skip(1) {
        tokens[who] = Some(
            api.signed_up(&format!("{name}@example.com"), PASSWORD)
                .await,
        );
    }
    let store = api.store();
    let rex = store
        .login_record(&Identifier::Email("rex@example.com".into()))
        .await
        .unwrap()
        .unwrap()
        .user_id;
    store.set_restricted(rex, true).await.unwrap();
    store
        .set_operator(&Identifier::Email("olga@example.com".into()), true)
        .await
        .unwrap();

    // Ada's generation, and an image of it as a worker would store it.
    let r = api
        .request(
            Method::POST,
            "/v1/generations",
            Some(json!({"prompt": "a harbour"})),
            tokens[1].as_deref(),
        )
        .await;
    assert_eq!(r.status, 202);
    let job: Uuid = r.json()["id"].as_str().unwrap().parse().unwrap();
    let generation = store.generation_for_job(job).await.unwrap().unwrap();
    let image = Uuid::now_v7();
    let key = format!("images/{image}.png");
    api.objects()
        .put(&key, bytes::Bytes::from_static(b"\x89PNG\r\n\x1a\n"))
        .await
        .unwrap();
    store
        .add_image(&ImageRecord {
            id: image,
            generation_id: generation.id,
            owner: generation.owner,
            object_key: key,
            width: 1024,
            height: 1024,
            content_type: "image/png".into(),
            bytes: 8,
            created_at: chrono::Utc::now(),
            source_image_id: None,
        })
        .await
        .unwrap();
    let shown = api
        .request(
            Method::GET,
            &format!("/v1/images/{image}"),
            None,
            tokens[1].as_deref(),
        )
        .await;
    assert_eq!(shown.status, 200);
    let file = shown.json()["url"].as_str().unwrap().to_owned();
    let r = api
        .request(Method::POST, "/v1/me/exports", None, tokens[1].as_deref())
        .await;
    assert_eq!(r.status, 202);
    let export: Uuid = r.json()["id"].as_str().unwrap().parse().unwrap();
    let now = chrono::Utc::now();
    store
        .publish_policy(&kiln_store::notices::PolicyVersion {
            version: POLICY.into(),
            effective_at: now + chrono::TimeDelta::days(8),
            summary: kiln_jobs::LocalizedText::same("What changes"),
            published_at: now,
        })
        .await
        .unwrap();
    let notice = kiln_store::notices::SecurityNotice {
        id: Uuid::now_v7(),
        subject: kiln_jobs::LocalizedText::same("Incident"),
        body: kiln_jobs::LocalizedText::same("Details"),
        everyone: true,
        created_at: now,
        job_id: None,
    };
    store.record_security_notice(&notice, &[]).await.unwrap();
    let mut system_jobs = [Uuid::nil(); 3];
    for id in &mut system_jobs {
        let probe = kiln_store::NewJob::of(&kiln_jobs::Probe::default()).unwrap();
        *id = store.enqueue(probe).await.unwrap().id;
    }
    let dead = kiln_store::operators::JobFilter::job(system_jobs[0]);
    assert_eq!(store.discard_jobs(&dead).await.unwrap(), 1);
    World {
        notice: notice.id,
        api,
        tokens,
        job,
        image,
        export,
        file,
        fresh: AtomicU32::new(0),
        system_jobs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_each_principal_as_it_should() {
    let w = world().await;
    let doc = w
        .api
        .request(Method::GET, "/openapi.json", None, None)
        .await;
    let matrix = matrix();
    let covered: BTreeSet<(String, String)> = matrix
        .iter()
        .map(|c| (c.method.to_string(), c.template.to_owned()))
        .collect();
    assert_eq!(
        documented(&doc.json()),
        covered,
        "the matrix must cover exactly the documented operations"
    );

    let mut wrong = Vec::new();
    for c in &matrix {
        // Anonymous first, the owner last.
        for who in [0, 2, 3, 4, 1] {
            let token = if c.template == "/v1/auth/logout" {
                w.login(who).await
            } else {
                w.tokens[who].clone()
            };
            let (path, body) = w.request(c);
            let r = w
                .api
                .request(c.method.clone(), &path, body, token.as_deref())
                .await;
            if r.status.as_u16() != c.expect[who] {
                wrong.push(format!(
                    "{} {} as {}: {} (expected {}) {}",
                    c.method,
                    c.template,
                    WHO[who],
                    r.status.as_u16(),
                    c.expect[who],
                    String::from_utf8_lossy(&r.body)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
