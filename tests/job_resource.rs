//! What the job resource says about why, through the real router in
//! process: a retryable job shows its last error and when it runs next,
//! and a job cancelled while it waited to retry shows `cancelled`, not
//! the error of the attempt before.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use axum::http::{Method, StatusCode};
use kiln_api::testing::TestApi;
use kiln_jobs::{Probe, UserId};
use kiln_store::{Failure, NewJob};

#[tokio::test]
async fn a_retryable_job_says_why_and_when_and_a_cancelled_one_says_cancelled() {
    let api = TestApi::sqlite().await.unwrap();
    let token = api
        .signed_up("ada@example.com", "correct horse battery")
        .await;
    let me = api
        .request(Method::GET, "/v1/me", None, Some(&token))
        .await
        .json();
    let owner = UserId(me["id"].as_str().unwrap().parse().unwrap());
    let store = api.store();
    let job = store
        .enqueue(NewJob::of(&Probe::default()).unwrap().owner(owner))
        .await
        .unwrap()
        .id;
    // Its first attempt fails with a connection error, to retry in a minute.
    let queues = vec!["default".to_owned()];
    let claimed = store
        .claim("test", &queues, 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    store
        .fail(
            claimed[0].lease,
            Failure {
                code: "connection_failed".into(),
                message: "the provider did not answer".into(),
                retry_in: Some(Duration::from_secs(60)),
            },
        )
        .await
        .unwrap();

    let path = format!("/v1/jobs/{job}");
    let waiting = api
        .request(Method::GET, &path, None, Some(&token))
        .await
        .json();
    assert_eq!(waiting["state"], "retryable", "{waiting}");
    assert_eq!(waiting["error"]["code"], "connection_failed");
    let next: chrono::DateTime<chrono::Utc> =
        waiting["next_run_at"].as_str().unwrap().parse().unwrap();
    let wait = next - chrono::Utc::now();
    assert!(
        wait > chrono::TimeDelta::seconds(30) && wait <= chrono::TimeDelta::seconds(60),
        "{waiting}"
    );

    let r = api
        .request(Method::POST, &format!("{path}/cancel"), None, Some(&token))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let cancelled = api
        .request(Method::GET, &path, None, Some(&token))
        .await
        .json();
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["error"]["code"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["next_run_at"], serde_json::Value::Null);
}
