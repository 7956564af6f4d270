//! Credits through the real binary: a balance is never overdrawn by
//! concurrent requests, and every job that reserved is charged or refunded
//! exactly once however it ends (success, block, cancel, retries, a
//! SIGKILLed worker). After each test the ledger adds up to the balance.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{Client, kiln, wait_job};
use kiln_jobs::{Probe, ProbeFailure};
use kiln_store::{
    JobState, NewJob, Store,
    credits::{CreditBalance, EntryKind},
    testing::{TestDatabase, account},
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// Every entry of the client's ledger (following the cursor) and the
/// sums `GET /v1/credits` answers, which they must add up to.
async fn ledger(client: &Client) -> (Vec<Value>, Value) {
    let mut entries = Vec::new();
    let mut path = "/v1/credits?limit=100".to_owned();
    loop {
        let page: Value = client.get(&path).await.json().await.unwrap();
        entries.extend(page["entries"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/credits?limit=100&cursor={cursor}"),
            None => return (entries, page),
        }
    }
}

/// The client's balance and reservations, checked against its entries.
async fn sums(client: &Client) -> (i64, i64) {
    let (entries, page) = ledger(client).await;
    let (mut balance, mut reserved) = (0, 0);
    for e in &entries {
        let amount = e["amount"].as_i64().unwrap();
        match e["kind"].as_str().unwrap() {
            "grant" | "purchase" => balance += amount,
            "reserve" => {
                balance -= amount;
                reserved += amount;
            }
            "charge" => reserved -= amount,
            "refund" => {
                reserved -= amount;
                balance += amount;
            }
            other => panic!("an entry of kind {other}"),
        }
    }
    let answered = (
        page["balance"].as_i64().unwrap(),
        page["reserved"].as_i64().unwrap(),
    );
    assert_eq!(
        (balance, reserved),
        answered,
        "the ledger does not add up: {entries:?}"
    );
    answered
}

fn kinds(entries: &[Value], kind: &str) -> usize {
    entries.iter().filter(|e| e["kind"] == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_generations_on_ten_credits_accept_exactly_ten() {
    let db = TestDatabase::postgres().await;
    let outbox = tempfile::tempdir().unwrap();
    let shared = |b: common::KilnBuilder| {
        b.database(&db.url)
            .env("KILN_CREDITS_SIGNUP_GRANT", 10)
            .env("KILN_API_CODE_KEY", "cd".repeat(32))
            .env("KILN_EMAIL_OUTBOX_DIR", outbox.path().display())
    };
    let api = shared(kiln(&["serve"])).spawn();
    api.wait_http(api.http, "/readyz").await;
    // A worker for the verification email only: what is accepted stays
    // queued, and reserved.
    let mailer = shared(kiln(&["work"]))
        .env("KILN_WORKER_QUEUES", "[notifications]")
        .spawn();
    mailer.wait_healthy().await;
    let client = Client::signed_up(&api, "spender@example.com").await;
    assert_eq!(sums(&client).await, (10, 0));

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..50 {
        let client = client.clone();
        tasks.spawn(async move {
            let r = client
                .post(
                    "/v1/generations",
                    json!({"prompt": format!("harbour {n}"), "size": "1024x1024"}),
                )
                .await;
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        });
    }
    let (mut accepted, mut refused) = (Vec::new(), 0);
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            (202, job) => accepted.push(job["id"].as_str().unwrap().to_owned()),
            (402, problem) => {
                assert_eq!(problem["code"], "insufficient_credits", "{problem}");
                refused += 1;
            }
            (status, body) => panic!("{status}: {body}"),
        }
    }
    assert_eq!((accepted.len(), refused), (10, 40));
    assert_eq!(sums(&client).await, (0, 10));
    let page: Value = client.get("/v1/jobs?limit=100").await.json().await.unwrap();
    assert_eq!(
        page["jobs"].as_array().unwrap().len(),
        10,
        "refused jobs exist"
    );

    // Cancelled while queued: each refunded once, even when cancelled twice.
    for id in &accepted {
        for _ in 0..2 {
            client
                .post(&format!("/v1/jobs/{id}/cancel"), json!({}))
                .await;
        }
    }
    assert_eq!(sums(&client).await, (10, 0));
    let (entries, _) = ledger(&client).await;
    assert_eq!(kinds(&entries, "refund"), 10, "{entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_is_charged_and_a_blocked_prompt_refunded_on_the_embedded_default() {
    let cwd = tempfile::tempdir().unwrap();
    let k = kiln(&[]).cwd(cwd.path()).spawn();
    k.wait_http(k.http, "/readyz").await;
    let client = Client::signed_up(&k, "painter@example.com").await;
    // The default sign-up grant.
    assert_eq!(sums(&client).await, (50, 0));

    let post = |prompt: &'static str, size: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .post(
                    "/v1/generations",
                    json!({"prompt": prompt, "size": size, "n": 2}),
                )
                .await;
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    // Two images at 1024x1536 cost 2 each by default.
    let painted = post("a quiet harbour", "1024x1536").await;
    let blocked = post("extreme GORE poster", "1024x1024").await;
    assert_eq!(client.wait_final(&painted).await["state"], "succeeded");
    assert_eq!(client.wait_final(&blocked).await["state"], "failed");

    assert_eq!(sums(&client).await, (46, 0));
    let (entries, _) = ledger(&client).await;
    let of = |id: &str| -> Vec<(String, i64)> {
        let mut mine: Vec<(String, i64)> = entries
            .iter()
            .filter(|e| e["job_id"] == id)
            .map(|e| {
                (
                    e["kind"].as_str().unwrap().to_owned(),
                    e["amount"].as_i64().unwrap(),
                )
            })
            .collect();
        mine.reverse();
        mine
    };
    assert_eq!(
        of(&painted),
        [("reserve".to_owned(), 4), ("charge".to_owned(), 4)]
    );
    assert_eq!(
        of(&blocked),
        [("reserve".to_owned(), 2), ("refund".to_owned(), 2)]
    );
}

async fn balance(store: &Store, user: kiln_jobs::UserId) -> CreditBalance {
    store.credit_balance(user).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_a_sigkilled_worker_charge_or_refund_once() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let owner = account(&store).await;
    store.grant_credits(owner, 10, "test").await.unwrap();
    let costing =
        |probe: Probe, credits: u32| NewJob::of(&probe).unwrap().owner(owner).reserving(credits);

    let victim = kiln(&["work"])
        .database(&db.url)
        .env("KILN_WORKER_LEASE_MS", 1500)
        .spawn();
    victim.wait_healthy().await;
    // Fails every attempt (3), then ends failed: refunded once.
    let failing = store
        .enqueue(costing(
            Probe {
                fail: Some(ProbeFailure::Transient),
                ..Probe::default()
            },
            3,
        ))
        .await
        .unwrap()
        .id;
    let job = wait_job(&store, failing, "failed", |j| j.state.is_final()).await;
    assert_eq!((job.state, job.attempt), (JobState::Failed, 3));

    // Outlives its worker, is rescued by another and succeeds: charged once.
    let lost = store
        .enqueue(costing(
            Probe {
                sleep_ms: 3000,
                ..Probe::default()
            },
            5,
        ))
        .await
        .unwrap()
        .id;
    wait_job(&store, lost, "running", |j| j.state == JobState::Running).await;
    victim.signal(Signal::SIGKILL);
    let rescuer = kiln(&["work"])
        .database(&db.url)
        .env("KILN_WORKER_MAINTENANCE_INTERVAL_MS", 200)
        .spawn();
    rescuer.wait_healthy().await;
    let job = wait_job(&store, lost, "succeeded", |j| j.state.is_final()).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!((job.attempt, job.rescues), (2, 1));

    assert_eq!(
        balance(&store, owner).await,
        CreditBalance {
            balance: 5,
            reserved: 0
        }
    );
    let entries = store.credit_entries(owner, None, 100).await.unwrap();
    let of = |id, kind| {
        entries
            .iter()
            .filter(|e| e.job_id == Some(id) && e.kind == kind)
            .count()
    };
    assert_eq!(
        (
            of(failing, EntryKind::Refund),
            of(failing, EntryKind::Charge)
        ),
        (1, 0)
    );
    assert_eq!(
        (of(lost, EntryKind::Charge), of(lost, EntryKind::Refund)),
        (1, 0)
    );
    assert_eq!(
        CreditBalance::of_entries(&entries),
        balance(&store, owner).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referral_grants_both_accounts_once_on_verification() {
    use axum::http::{Method, StatusCode};
    let api = kiln_api::testing::TestApi::sqlite().await.unwrap();
    let ada = api
        .signed_up("ada@example.com", "correct horse battery")
        .await;
    let credits = |token: String| {
        let api = &api;
        async move {
            let r = api
                .request(Method::GET, "/v1/credits", None, Some(&token))
                .await;
            assert_eq!(r.status, StatusCode::OK);
            let page = r.json();
            (
                page["balance"].clone(),
                page["entries"].as_array().unwrap().len(),
            )
        }
    };
    assert_eq!(credits(ada.clone()).await, (json!(50), 1));
    let ada_id = api
        .store()
        .login_record(&kiln_store::accounts::Identifier::Email(
            "ada@example.com".into(),
        ))
        .await
        .unwrap()
        .unwrap()
        .user_id;
    let code = api.store().referral_code(ada_id).await.unwrap().unwrap();

    let r = api
        .request(
            Method::POST,
            "/v1/auth/register",
            Some(
                json!({"email": "bob@example.com", "password": "a lantern at low tide",
                        "birth_date": "1990-01-01", "referral_code": code}),
            ),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let verify = json!({"email": "bob@example.com",
                        "code": api.sent_code("bob@example.com").await.unwrap()});
    let r = api
        .request(Method::POST, "/v1/auth/verify", Some(verify.clone()), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Verifying again changes nothing (the code is spent).
    let again = api
        .request(Method::POST, "/v1/auth/verify", Some(verify), None)
        .await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = api
        .request(
            Method::POST,
            "/v1/auth/login",
            Some(json!({"email": "bob@example.com", "password": "a lantern at low tide"})),
            None,
        )
        .await;
    let bob = r.json()["token"].as_str().unwrap().to_owned();
    // 50 for signing up and 10 for the referral; the referrer gets 10 too.
    assert_eq!(credits(bob).await, (json!(60), 2));
    assert_eq!(credits(ada).await, (json!(60), 2));
}
