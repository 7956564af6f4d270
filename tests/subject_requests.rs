//! The register of data-subject requests as operators read it, through the
//! real router in process: the owner's requests appear with their due
//! dates, only operators may read it, and bad pages are refused.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use axum::http::{Method, StatusCode};
use kiln_api::testing::TestApi;
use kiln_store::accounts::Identifier;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn an_operator_sees_each_request_an_owner_made_with_its_due_date() {
    let api = TestApi::sqlite().await.unwrap();
    let ada = api.signed_up("ada@example.com", PASSWORD).await;
    let olga = api.signed_up("olga@example.com", PASSWORD).await;
    api.store()
        .set_operator(&Identifier::Email("olga@example.com".into()), true)
        .await
        .unwrap();
    let get = |path: &'static str, token: Option<String>| {
        let api = &api;
        async move { api.request(Method::GET, path, None, token.as_deref()).await }
    };

    // Reading the account twice is one access request that day.
    let me = get("/v1/me", Some(ada.clone())).await.json();
    get("/v1/me", Some(ada.clone())).await;
    let r = api
        .request(
            Method::PATCH,
            "/v1/me",
            Some(json!({"email": "ada.new@example.com"})),
            Some(&ada),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // A copy of the data, waiting (no worker here), then a restriction:
    // the export is the right of access and goes on.
    let r = api
        .request(Method::POST, "/v1/me/exports", None, Some(&ada))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let export = r.json();
    let r = api
        .request(Method::POST, "/v1/me/restriction", None, Some(&ada))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let export_path = format!("/v1/jobs/{}", export["id"].as_str().unwrap());
    let still = api
        .request(Method::GET, &export_path, None, Some(&ada))
        .await
        .json();
    assert_eq!(still["state"], "available", "{still}");

    let r = get("/admin/v1/subject-requests", Some(olga.clone())).await;
    assert_eq!(r.status, StatusCode::OK);
    let page = r.json();
    let requests: Vec<&Value> = page["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["account_id"] == me["id"])
        .collect();
    let kinds: Vec<&str> = requests
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["restriction", "export", "correction", "access"],
        "{page}"
    );
    for r in &requests {
        assert_eq!(r["overdue"], false);
        // Answered at once, but the export, which its job answers.
        if r["kind"] == "export" {
            assert_eq!(r["job_id"], export["id"]);
            assert!(r["completed_at"].is_null(), "{r}");
        } else {
            assert!(r["completed_at"].is_string(), "{r}");
        }
        let requested: chrono::DateTime<chrono::Utc> =
            r["requested_at"].as_str().unwrap().parse().unwrap();
        let due: chrono::DateTime<chrono::Utc> = r["due_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(due - requested, chrono::TimeDelta::days(30));
    }
    let overdue = get(
        "/admin/v1/subject-requests?overdue=true",
        Some(olga.clone()),
    )
    .await;
    assert_eq!(overdue.json()["requests"], json!([]));

    // Pages of one, newest first, end with no cursor.
    let first = get("/admin/v1/subject-requests?limit=1", Some(olga.clone()))
        .await
        .json();
    assert_eq!(first["requests"].as_array().unwrap().len(), 1);
    assert!(first["next_cursor"].is_string());

    // Not for the owner, nor for anyone without a token.
    let r = get("/admin/v1/subject-requests", Some(ada.clone())).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["code"], "forbidden");
    assert_eq!(
        get("/admin/v1/subject-requests", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    for bad in [
        "/admin/v1/subject-requests?limit=0",
        "/admin/v1/subject-requests?cursor=nonsense",
    ] {
        let r = get(bad, Some(olga.clone())).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(r.content_type(), "application/problem+json");
    }
}

#[tokio::test]
async fn an_export_its_owner_cancels_is_a_request_withdrawn_not_one_overdue() {
    let api = TestApi::sqlite().await.unwrap();
    let ada = api.signed_up("ada@example.com", PASSWORD).await;
    let olga = api.signed_up("olga@example.com", PASSWORD).await;
    api.store()
        .set_operator(&Identifier::Email("olga@example.com".into()), true)
        .await
        .unwrap();
    let r = api
        .request(Method::POST, "/v1/me/exports", None, Some(&ada))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let export = r.json()["id"].as_str().unwrap().to_owned();
    let open = |page: &Value| {
        page["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "export" && r["completed_at"].is_null())
            .count()
    };
    let page = api
        .request(Method::GET, "/admin/v1/subject-requests", None, Some(&olga))
        .await
        .json();
    assert_eq!(open(&page), 1, "{page}");

    let r = api
        .request(
            Method::POST,
            &format!("/v1/jobs/{export}/cancel"),
            None,
            Some(&ada),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let page = api
        .request(Method::GET, "/admin/v1/subject-requests", None, Some(&olga))
        .await
        .json();
    assert_eq!(open(&page), 0, "{page}");
}
