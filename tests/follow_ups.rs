//! Follow-up jobs through real `kiln` processes on PostgreSQL: one request
//! yields a generation and an upscale of each of its images, enqueued with
//! the generation's success and listed as its children; a blocked
//! generation enqueues none and refunds everything; a worker SIGKILLed
//! mid-generation leaves one set of children after the rescue, each charged
//! once.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use common::{Client, kiln, png, wait_job};
use kiln_jobs::{FollowUps, Job, UpscaleEach, UpscaleImage};
use kiln_store::{
    JobState,
    credits::{CreditBalance, EntryKind},
    generations::{GenerationEnqueued, GenerationInput, NewGeneration},
    testing::{TestDatabase, account},
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

async fn credits(client: &Client) -> Value {
    let r = client.get("/v1/credits?limit=100").await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_and_an_upscale_of_each_image_in_one_request() {
    let db = TestDatabase::postgres().await;
    let kiln = kiln(&[]).database(&db.url).spawn();
    kiln.wait_healthy().await;
    let ada = Client::signed_up(&kiln, "ada.follow@example.com").await;
    let before = credits(&ada).await["balance"].as_u64().unwrap();

    let r = ada
        .post(
            "/v1/generations",
            json!({"prompt": "a lighthouse", "n": 2, "size": "256x256",
                   "then": {"upscale": {"scale": 2}}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let parent: Value = r.json().await.unwrap();
    let parent_id = parent["id"].as_str().unwrap().to_owned();
    assert_eq!(parent["children"], json!([]));
    let parent = ada.wait_final(&parent_id).await;
    assert_eq!(parent["state"], "succeeded", "{parent}");
    let images = parent["result"]["images"].as_array().unwrap().clone();
    assert_eq!(images.len(), 2);

    let children = parent["children"].as_array().unwrap().clone();
    assert_eq!(children.len(), 2, "{parent}");
    for child in &children {
        assert_eq!(child["kind"], UpscaleImage::KIND);
        let done = ada.wait_final(child["id"].as_str().unwrap()).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["parent_id"], parent_id.as_str());
        let image = &done["result"]["image"];
        assert_eq!(
            (image["width"].as_u64(), image["height"].as_u64()),
            (Some(512), Some(512))
        );
        assert_eq!(image["generation_id"], images[0]["generation_id"]);
    }
    // Each image upscaled once: the children's payloads name each image.
    let store = db.store().await.unwrap();
    let parent_uuid: uuid::Uuid = parent_id.parse().unwrap();
    let mut upscaled: Vec<String> = store
        .children_of(&[parent_uuid])
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.payload["image_id"].as_str().unwrap().to_owned())
        .collect();
    let mut generated: Vec<String> = images
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    upscaled.sort();
    generated.sort();
    assert_eq!(upscaled, generated);
    // The parent lists them finished now.
    let parent: Value = ada
        .get(&format!("/v1/jobs/{parent_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        parent["children"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "succeeded"),
        "{parent}"
    );

    // Charged once each: the generation its own price, each upscale its own.
    let ledger = credits(&ada).await;
    assert_eq!(ledger["reserved"], 0, "{ledger}");
    let entries = ledger["entries"].as_array().unwrap();
    let of = |job: &str, kind: &str| -> Vec<u64> {
        entries
            .iter()
            .filter(|e| e["job_id"] == job && e["kind"] == kind)
            .map(|e| e["amount"].as_u64().unwrap())
            .collect()
    };
    let generation_price = of(&parent_id, "charge");
    assert_eq!(generation_price.len(), 1, "{ledger}");
    let handed_back = of(&parent_id, "refund");
    assert_eq!(handed_back.len(), 1, "{ledger}");
    let mut upscales = 0;
    for child in &children {
        let id = child["id"].as_str().unwrap();
        let charged = of(id, "charge");
        assert_eq!(charged.len(), 1, "{ledger}");
        assert_eq!(of(id, "reserve"), charged);
        upscales += charged[0];
    }
    assert_eq!(
        handed_back[0], upscales,
        "the follow-ups' share moved to them"
    );
    assert_eq!(
        ledger["balance"].as_u64().unwrap(),
        before - generation_price[0] - upscales
    );

    // A blocked generation enqueues none and gives everything back.
    let r = ada
        .post(
            "/v1/generations",
            json!({"prompt": "gore", "then": {"upscale": {}}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let blocked: Value = r.json().await.unwrap();
    let blocked = ada.wait_final(blocked["id"].as_str().unwrap()).await;
    assert_eq!(blocked["state"], "failed");
    assert_eq!(blocked["children"], json!([]));
    let after = credits(&ada).await;
    assert_eq!(after["balance"], ledger["balance"], "{after}");
    assert_eq!(after["reserved"], 0);

    // A scale that is not offered is refused before anything is reserved.
    let r = ada
        .post(
            "/v1/generations",
            json!({"prompt": "a lighthouse", "then": {"upscale": {"scale": 3}}}),
        )
        .await;
    assert_eq!(r.status(), 422);
}

/// An OpenAI images fake that takes 3 s to answer: long enough to kill the
/// worker waiting for it.
async fn slow_images() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(Duration::from_secs(3))
                .set_body_json(json!({"created": 1_700_000_000,
                    "data": [{"b64_json": BASE64.encode(png(256, 256, 90))}]})),
        )
        .mount(&server)
        .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_rescued_after_sigkill_has_each_follow_up_once() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let fake = slow_images().await;
    let storage = tempfile::tempdir().unwrap();
    let worker = |extra: &[(&str, &str)]| {
        let mut builder = kiln(&["work"])
            .database(&db.url)
            .env("KILN_STORAGE_ROOT", storage.path().display())
            .env("KILN_IMAGES_PROVIDER", "openai")
            .env("KILN_IMAGES_BASE_URL", fake.uri())
            .env("KILN_IMAGES_API_KEY", "sk-test");
        for (k, v) in extra {
            builder = builder.env(k, v);
        }
        builder.spawn()
    };

    let owner = account(&store).await;
    store.grant_credits(owner, 20, "test").await.unwrap();
    let then = FollowUps {
        upscale: Some(UpscaleEach {
            scale: 2,
            credits: 3,
        }),
    };
    let enqueued = store
        .create_generation(NewGeneration {
            owner,
            input: GenerationInput {
                prompt: "a harbour at night".into(),
                model: "gpt-image-1".into(),
                width: 256,
                height: 256,
                n: 1,
                reference_urls: vec![],
                request_hash: "h".into(),
                credits: 2,
                webhook: None,
                then: Some(then),
                traceparent: None,
            },
            idempotency_key: None,
        })
        .await
        .unwrap();
    let GenerationEnqueued::Created { job } = enqueued else {
        panic!("not created: {enqueued:?}");
    };
    let parent = job.id;
    assert_eq!(
        store.credit_balance(owner).await.unwrap(),
        CreditBalance {
            balance: 15,
            reserved: 5
        }
    );

    // The first worker takes it and dies waiting for the provider.
    let victim = worker(&[("KILN_WORKER_LEASE_MS", "1500")]);
    victim.wait_healthy().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fake
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the provider was never called"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    victim.signal(Signal::SIGKILL);

    // Another rescues it, runs it again and records its success once.
    let rescuer = worker(&[("KILN_WORKER_MAINTENANCE_INTERVAL_MS", "200")]);
    rescuer.wait_healthy().await;
    let done = wait_job(&store, parent, "finished", |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!((done.attempt, done.rescues), (2, 1));
    let children = store.children_of(&[parent]).await.unwrap();
    assert_eq!(children.len(), 1, "{children:?}");
    let child = wait_job(&store, children[0].id, "finished", |j| j.state.is_final()).await;
    assert_eq!(child.state, JobState::Succeeded, "{child:?}");
    assert_eq!(child.parent_id, Some(parent));

    // The provider was asked twice (the history has two attempts), the
    // ledger charged each job once.
    assert_eq!(fake.received_requests().await.unwrap().len(), 2);
    let entries = store.credit_entries(owner, None, 100).await.unwrap();
    let count = |job, kind| {
        entries
            .iter()
            .filter(|e| e.job_id == Some(job) && e.kind == kind)
            .count()
    };
    assert_eq!(count(parent, EntryKind::Charge), 1);
    assert_eq!(count(parent, EntryKind::Refund), 1);
    assert_eq!(count(child.id, EntryKind::Reserve), 1);
    assert_eq!(count(child.id, EntryKind::Charge), 1);
    assert_eq!(
        store.credit_balance(owner).await.unwrap(),
        CreditBalance {
            balance: 15,
            reserved: 0
        }
    );
    assert_eq!(
        CreditBalance::of_entries(&entries),
        store.credit_balance(owner).await.unwrap()
    );
}

/// In process: cancelling a parent that already succeeded cancels its
/// unfinished follow-ups (200), and a parent with none left is 409.
#[tokio::test]
async fn cancelling_a_succeeded_parent_cancels_its_follow_ups() {
    use axum::http::Method;
    let api = kiln_api::testing::TestApi::sqlite().await.unwrap();
    let token = api
        .signed_up("ada@example.com", "correct horse battery")
        .await;
    let r = api
        .request(
            Method::POST,
            "/v1/generations",
            Some(json!({"prompt": "a lighthouse", "n": 2, "then": {"upscale": {"scale": 4}}})),
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.json());
    let parent = r.json()["id"].as_str().unwrap().to_owned();
    // Its success, as a worker records it, with two upscales after it.
    let store = api.store();
    let claimed = store
        .claim("w", &["generation".to_owned()], 1, Duration::from_secs(30))
        .await
        .unwrap()
        .pop()
        .unwrap();
    let follow_ups = (0..2)
        .map(|_| {
            kiln_store::NewJob::of(&UpscaleImage {
                image_id: uuid::Uuid::now_v7(),
                scale: 4,
            })
            .unwrap()
        })
        .collect();
    let done = kiln_store::Completion {
        lease: claimed.lease,
        result: json!({}),
    };
    assert_eq!(
        store
            .complete_then(&done, follow_ups)
            .await
            .unwrap()
            .map(|c| c.len()),
        Some(2)
    );

    let cancel = |path: String| {
        let api = &api;
        let token = token.clone();
        async move { api.request(Method::POST, &path, None, Some(&token)).await }
    };
    let r = cancel(format!("/v1/jobs/{parent}/cancel")).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let body = r.json();
    assert_eq!(body["state"], "succeeded");
    let states: Vec<&str> = body["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["cancelled", "cancelled"]);
    let r = cancel(format!("/v1/jobs/{parent}/cancel")).await;
    assert_eq!(r.status, 409, "nothing of it is left to cancel");
}
