//! The operators' queue and job API through the real router in process:
//! every action answers as documented, non-operators get 403, the job list
//! carries no personal data (no email, prompt, payload or error text), and
//! every action and single-job read is in the access log with the
//! operator, the IP and what it touched.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use common::operators::{OPERATOR_IP, World, world};
use kiln_api::testing::TestResponse;
use kiln_store::{
    Failure, JobState,
    access_log::{AccessEntry, AccessEvent},
};
use serde_json::{Value, json};

const PROMPT: &str = "a lighthouse painted by ada lovelace";

impl World {
    /// A request from the operator's IP.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: &str,
    ) -> TestResponse {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header("x-forwarded-for", OPERATOR_IP);
        let body = match body {
            Some(json) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.api.send(req.body(body).unwrap()).await
    }

    async fn operator(&self, method: Method, path: &str, body: Option<Value>) -> TestResponse {
        self.call(method, path, body, &self.olga).await
    }

    /// Ada's generation: its job id.
    async fn generation(&self) -> uuid::Uuid {
        let r = self
            .call(
                Method::POST,
                "/v1/generations",
                Some(json!({"prompt": PROMPT})),
                &self.ada,
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        r.json()["id"].as_str().unwrap().parse().unwrap()
    }

    /// Ada's credit balance.
    async fn balance(&self) -> u64 {
        let r = self.call(Method::GET, "/v1/credits", None, &self.ada).await;
        r.json()["balance"].as_u64().unwrap()
    }

    /// The operator's audit entries, oldest first.
    async fn audit(&self) -> Vec<AccessEntry> {
        let mut entries = self
            .api
            .store()
            .access_log(self.olga_id, None, 100)
            .await
            .unwrap();
        entries.retain(|e| e.detail.is_some());
        entries.reverse();
        entries
    }
}

#[tokio::test]
async fn the_overview_lists_every_queue_for_operators_only() {
    let w = world().await;
    w.generation().await;
    let r = w.operator(Method::GET, "/admin/v1/queues", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let queues = r.json()["queues"].as_array().unwrap().clone();
    let names: Vec<&str> = queues
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    for q in kiln_jobs::catalogue::queues() {
        assert!(names.contains(&q), "{q} missing: {names:?}");
    }
    let generation = queues.iter().find(|q| q["queue"] == "generation").unwrap();
    assert_eq!(generation["counts"]["available"], 1, "{generation}");
    assert_eq!(generation["paused"], false);
    assert!(generation["concurrency_limit"].is_null());
    assert!(generation["oldest_due_age_secs"].is_number());
    let minutes: Vec<u64> = generation["throughput"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["minutes"].as_u64().unwrap())
        .collect();
    assert_eq!(minutes, [1, 5, 60]);

    let r = w.call(Method::GET, "/admin/v1/queues", None, &w.ada).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["code"], "forbidden");
    assert_eq!(r.content_type(), "application/problem+json");
    let r = w
        .api
        .request(Method::GET, "/admin/v1/queues", None, None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_list_shows_attempts_without_personal_data_and_the_detail_is_audited() {
    let w = world().await;
    let id = w.generation().await;
    // The provider's error quotes the prompt, as some do.
    let store = w.api.store();
    let claimed = store
        .claim(
            "w",
            &["generation".to_owned()],
            1,
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap()
        .remove(0);
    let failure = Failure {
        code: "provider_error".into(),
        message: format!("rejected: {PROMPT}"),
        retry_in: Some(std::time::Duration::from_secs(60)),
    };
    assert!(store.fail(claimed.lease, failure).await.unwrap());

    let r = w
        .operator(Method::GET, "/admin/v1/jobs?state=retryable", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let page = r.json();
    let job = &page["jobs"][0];
    assert_eq!(job["id"], id.to_string());
    assert_eq!(job["errors"][0]["code"], "provider_error");
    assert_eq!(job["errors"][0]["attempt"], 1);
    let text = String::from_utf8_lossy(&r.body);
    for secret in ["lighthouse", "ada@example.com", "payload", "rejected"] {
        assert!(!text.contains(secret), "{secret} in the list: {text}");
    }
    // Filtered by owner and kind, paged.
    let owner = job["owner"].as_str().unwrap().to_owned();
    let path = format!("/admin/v1/jobs?owner={owner}&kind=generate_image&limit=1");
    let r = w.operator(Method::GET, &path, None).await;
    assert_eq!(r.json()["jobs"].as_array().unwrap().len(), 1);
    assert!(r.json()["next_cursor"].is_null());
    assert!(w.audit().await.is_empty(), "listing is not an audited read");

    let r = w
        .operator(Method::GET, &format!("/admin/v1/jobs/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let detail = r.json();
    assert!(detail["payload"]["generation_id"].is_string(), "{detail}");
    assert_eq!(
        detail["error_messages"][0]["message"],
        format!("rejected: {PROMPT}")
    );
    let audit = w.audit().await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].event, AccessEvent::OperatorJobRead);
    assert_eq!(audit[0].ip.as_deref(), Some(OPERATOR_IP));
    let logged = audit[0].detail.as_ref().unwrap();
    assert_eq!(logged["job_id"], id.to_string());
    assert!(!logged.to_string().contains("generation_id"), "{logged}");

    for bad in [
        "/admin/v1/jobs?state=nonsense",
        "/admin/v1/jobs?kind=no_such_kind",
        "/admin/v1/jobs?cursor=nope",
        "/admin/v1/jobs?limit=0",
    ] {
        let r = w.operator(Method::GET, bad, None).await;
        assert!(r.status.is_client_error(), "{bad}: {}", r.status);
        assert_eq!(r.content_type(), "application/problem+json");
    }
    let r = w
        .operator(
            Method::GET,
            &format!("/admin/v1/jobs/{}", uuid::Uuid::now_v7()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = w
        .call(Method::GET, &format!("/admin/v1/jobs/{id}"), None, &w.ada)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn one_job_is_discarded_retried_and_cancelled_with_credits_refunded() {
    let w = world().await;
    let before = w.balance().await;
    let id = w.generation().await;
    assert!(
        w.balance().await < before,
        "the generation reserved credits"
    );

    let r = w
        .operator(Method::POST, &format!("/admin/v1/jobs/{id}/discard"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["state"], "failed");
    assert_eq!(r.json()["errors"][0]["code"], "discarded");
    assert_eq!(w.balance().await, before, "refunded");
    let r = w
        .operator(Method::POST, &format!("/admin/v1/jobs/{id}/discard"), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    let r = w
        .operator(Method::POST, &format!("/admin/v1/jobs/{id}/retry"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["state"], "available");
    assert_eq!(w.balance().await, before, "an operator's retry is free");
    let r = w
        .operator(Method::POST, &format!("/admin/v1/jobs/{id}/retry"), None)
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "an available job is not retried"
    );

    // The owner sees it back in the queue.
    let mine = w
        .call(Method::GET, &format!("/v1/jobs/{id}"), None, &w.ada)
        .await;
    assert_eq!(mine.json()["state"], "available");

    let r = w
        .operator(Method::POST, &format!("/admin/v1/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["state"], "cancelled");
    let r = w
        .operator(Method::POST, &format!("/admin/v1/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = w
        .operator(Method::POST, "/admin/v1/jobs/nonsense/cancel", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A second generation, cancelled: its reservation comes back too.
    let other = w.generation().await;
    let r = w
        .operator(
            Method::POST,
            &format!("/admin/v1/jobs/{other}/cancel"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(w.balance().await, before);

    let r = w
        .call(
            Method::POST,
            &format!("/admin/v1/jobs/{other}/retry"),
            None,
            &w.ada,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let audit = w.audit().await;
    let events: Vec<AccessEvent> = audit.iter().map(|e| e.event).collect();
    assert_eq!(
        events,
        [
            AccessEvent::OperatorJobDiscarded,
            AccessEvent::OperatorJobRetried,
            AccessEvent::OperatorJobCancelled,
            AccessEvent::OperatorJobCancelled,
        ],
        "one entry per action that happened"
    );
    for e in &audit {
        assert_eq!(e.ip.as_deref(), Some(OPERATOR_IP));
        assert!(e.detail.as_ref().unwrap()["job_id"].is_string(), "{e:?}");
    }
    assert_eq!(audit[2].detail.as_ref().unwrap()["job_id"], id.to_string());
    assert_eq!(audit[3].detail.as_ref().unwrap()["outcome"], "cancelled");
}

#[tokio::test]
async fn queues_pause_resume_and_take_a_limit_and_bulk_actions_report_counts() {
    let w = world().await;
    let r = w
        .operator(Method::POST, "/admin/v1/queues/generation/pause", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.json(),
        json!({"queue": "generation", "paused": true, "concurrency_limit": null})
    );
    let r = w
        .operator(
            Method::PUT,
            "/admin/v1/queues/generation/concurrency",
            Some(json!({"limit": 3})),
        )
        .await;
    assert_eq!(r.json()["concurrency_limit"], 3);
    let overview = w
        .operator(Method::GET, "/admin/v1/queues", None)
        .await
        .json();
    let generation = overview["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "generation")
        .unwrap()
        .clone();
    assert_eq!(generation["paused"], true);
    assert_eq!(generation["concurrency_limit"], 3);
    // Absent clears it, as null does.
    let r = w
        .operator(
            Method::PUT,
            "/admin/v1/queues/generation/concurrency",
            Some(json!({})),
        )
        .await;
    assert_eq!(r.json()["concurrency_limit"], Value::Null);
    let r = w
        .operator(Method::POST, "/admin/v1/queues/generation/resume", None)
        .await;
    assert_eq!(r.json()["paused"], false);

    for (method, path, body, status) in [
        (Method::POST, "/admin/v1/queues/nope/pause", None, 404),
        (Method::POST, "/admin/v1/queues/nope/resume", None, 404),
        (
            Method::PUT,
            "/admin/v1/queues/nope/concurrency",
            Some(json!({"limit": 1})),
            404,
        ),
        (
            Method::PUT,
            "/admin/v1/queues/generation/concurrency",
            Some(json!({"limit": 0})),
            422,
        ),
        (
            Method::PUT,
            "/admin/v1/queues/generation/concurrency",
            Some(json!({"limit": -1})),
            422,
        ),
        (
            Method::PUT,
            "/admin/v1/queues/generation/concurrency",
            Some(json!({"max": 1})),
            422,
        ),
        (
            Method::POST,
            "/admin/v1/jobs/bulk",
            Some(json!({"action": "retry", "filter": {}})),
            422,
        ),
        (
            Method::POST,
            "/admin/v1/jobs/bulk",
            Some(json!({"action": "explode", "filter": {"queue": "generation"}})),
            422,
        ),
        (
            Method::POST,
            "/admin/v1/jobs/bulk",
            Some(json!({"action": "retry", "filter": {"queue": "nope"}})),
            422,
        ),
    ] {
        let r = w.operator(method.clone(), path, body.clone()).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "{method} {path} {body:?}: {:?}",
            r.body
        );
        assert_eq!(r.content_type(), "application/problem+json");
    }

    // Three of Ada's generations, cancelled by owner in one bulk request.
    for _ in 0..3 {
        w.generation().await;
    }
    let owner = w
        .operator(Method::GET, "/admin/v1/jobs?kind=generate_image", None)
        .await
        .json()["jobs"][0]["owner"]
        .clone();
    let body = json!({"action": "cancel", "filter": {"owner": owner, "state": "available"}});
    let r = w
        .operator(Method::POST, "/admin/v1/jobs/bulk", Some(body))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.json(),
        json!({"action": "cancel", "count": 3, "cancelling": 0})
    );
    let body = json!({"action": "retry", "filter": {"state": "cancelled", "queue": "generation"}});
    let r = w
        .operator(Method::POST, "/admin/v1/jobs/bulk", Some(body))
        .await;
    assert_eq!(r.json()["count"], 3);
    let body = json!({"action": "discard", "filter": {"kind": "generate_image"}});
    let r = w
        .operator(Method::POST, "/admin/v1/jobs/bulk", Some(body))
        .await;
    assert_eq!(r.json()["count"], 3);
    let body = json!({"action": "discard", "filter": {"kind": "generate_image"}});
    let r = w
        .call(Method::POST, "/admin/v1/jobs/bulk", Some(body), &w.ada)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let dead = w
        .operator(Method::GET, "/admin/v1/jobs?state=failed", None)
        .await
        .json();
    assert_eq!(dead["jobs"].as_array().unwrap().len(), 3);
    assert_eq!(
        w.api
            .store()
            .get(dead["jobs"][0]["id"].as_str().unwrap().parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Failed
    );

    let audit = w.audit().await;
    let events: Vec<AccessEvent> = audit.iter().map(|e| e.event).collect();
    assert_eq!(
        events,
        [
            AccessEvent::OperatorQueuePaused,
            AccessEvent::OperatorQueueConcurrency,
            AccessEvent::OperatorQueueConcurrency,
            AccessEvent::OperatorQueueResumed,
            AccessEvent::OperatorBulkAction,
            AccessEvent::OperatorBulkAction,
            AccessEvent::OperatorBulkAction,
        ]
    );
    assert_eq!(
        audit[0].detail.as_ref().unwrap(),
        &json!({"queue": "generation"})
    );
    assert_eq!(audit[1].detail.as_ref().unwrap()["limit"], 3);
    let bulk = audit[4].detail.as_ref().unwrap();
    assert_eq!(bulk["action"], "cancel");
    assert_eq!(bulk["count"], 3);
    assert_eq!(bulk["filter"]["owner"], owner);
    assert!(audit.iter().all(|e| e.ip.as_deref() == Some(OPERATOR_IP)));
}
