//! The product end to end: the real `kiln` binary, a client doing the
//! whole job — register, log in, enqueue a generation, poll it to the end,
//! download the image.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::HashSet;

use common::{Client, assert_problem, kiln};
use kiln_store::testing::TestDatabase;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

fn decode_png(bytes: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().expect("a PNG");
    let info = reader.info();
    (info.width, info.height)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_generates_an_image_a_client_can_download() {
    let k = kiln(&[]).spawn();
    k.wait_http(k.http, "/readyz").await;
    let client = Client::signed_up(&k, "painter@example.com").await;

    let r = client
        .post(
            "/v1/generations",
            json!({"prompt": "a red fox in fresh snow", "size": "512x512"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = r.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/jobs/{}", job["id"].as_str().unwrap())
    );
    assert_eq!(job["kind"], "generate_image");

    // Long-poll through the stages; progress never goes back.
    let mut stages = Vec::new();
    let mut last_progress = -1;
    let job = loop {
        let j: Value = client
            .get(&format!("{location}?wait=10&until=change"))
            .await
            .json()
            .await
            .unwrap();
        let progress = j["progress"].as_i64().unwrap();
        assert!(progress >= last_progress, "progress went back: {j}");
        last_progress = progress;
        stages.push(j["stage"].as_str().unwrap().to_owned());
        if j["state"] == "succeeded" || j["state"] == "failed" {
            break j;
        }
    };
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["stage"], "done");
    assert_eq!(job["progress"], 100);
    assert_eq!(stages.last().unwrap(), "done");

    let image = &job["result"]["images"][0];
    let url = image["url"].as_str().unwrap();
    let r = reqwest::get(k.url(url)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(decode_png(&bytes), (512, 512));
    // The dev generator wrote the prompt into its PNG; the stored copy
    // carries none of it.
    let prompt = b"a red fox in fresh snow";
    assert!(!bytes.windows(prompt.len()).any(|w| w == prompt));

    // The image resource gives a fresh signed URL to the same bytes.
    let meta: Value = client
        .get(&format!("/v1/images/{}", image["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    let again = reqwest::get(k.url(meta["url"].as_str().unwrap()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(again, bytes);

    // A tampered signature is refused.
    let tampered = url.replace("signature=", "signature=0");
    let r = reqwest::get(k.url(&tampered)).await.unwrap();
    assert_problem(r, 403, "bad_signature").await;

    // Without `until=change` one long-poll answers when the job has
    // finished, however many stages it goes through first.
    let r = client
        .post(
            "/v1/generations",
            json!({"prompt": "a lighthouse", "size": "256x256"}),
        )
        .await;
    let queued: Value = r.json().await.unwrap();
    let done: Value = client
        .get(&format!(
            "/v1/jobs/{}?wait=30",
            queued["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["result"]["images"][0]["width"].is_number(), "{done}");
    // An unknown `until` is refused, not ignored.
    let r = client
        .get(&format!(
            "/v1/jobs/{}?wait=1&until=forever",
            queued["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_gives_one_job_and_another_body_conflicts() {
    let k = kiln(&[]).spawn();
    k.wait_http(k.http, "/readyz").await;
    let client = Client::signed_up(&k, "retry@example.com").await;
    let body = json!({"prompt": "a quiet harbour", "size": "256x256"});
    let send = |body: Value| {
        client
            .request(reqwest::Method::POST, "/v1/generations")
            .header("Idempotency-Key", "order-42")
            .json(&body)
            .send()
    };
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let second = send(body.clone()).await.unwrap();
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);

    let other = send(json!({"prompt": "a loud harbour", "size": "256x256"}))
        .await
        .unwrap();
    assert_problem(other, 409, "conflict").await;

    let page: Value = client.get("/v1/jobs").await.json().await.unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_enqueues_every_item_in_order_under_one_idempotency_key() {
    let k = kiln(&[]).spawn();
    k.wait_http(k.http, "/readyz").await;
    let client = Client::signed_up(&k, "batch@example.com").await;
    let prompts = ["a red fox", "a grey heron", "a white moth"];
    let body = json!({"items": prompts.map(|p| json!({"prompt": p, "size": "256x256"}))});
    let send = |body: Value| {
        client
            .request(reqwest::Method::POST, "/v1/generations/batch")
            .header("Idempotency-Key", "batch-7")
            .json(&body)
            .send()
    };
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let ids: Vec<String> = first["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(
        first["jobs"]
            .as_array()
            .unwrap()
            .iter()
            // This process's own workers may have claimed them already.
            .all(|j| j["kind"] == "generate_image")
    );

    // The same key and items: the same jobs, in order; other items: 409.
    let again = send(body.clone()).await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    let again_ids: Vec<&str> = again["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(again_ids, ids);
    let reordered = json!({"items": [body["items"][1], body["items"][0], body["items"][2]]});
    assert_problem(send(reordered).await.unwrap(), 409, "conflict").await;

    // Each item is a generation of its own that runs to the end.
    for id in &ids {
        let job = client.wait_final(id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["result"]["images"].as_array().unwrap().len(), 1);
    }
    let page: Value = client.get("/v1/jobs").await.json().await.unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_prompt_fails_with_content_blocked_and_stores_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    let k = kiln(&[]).cwd(cwd.path()).spawn();
    k.wait_http(k.http, "/readyz").await;
    let client = Client::signed_up(&k, "edgy@example.com").await;
    let id = client
        .accepted(
            "/v1/generations",
            json!({"prompt": "extreme GORE poster", "size": "256x256"}),
        )
        .await;
    let job = client.wait_final(&id).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["stage"], "blocked");
    assert_eq!(job["error"]["code"], "content_blocked");
    assert_eq!(job["attempt"], 1, "a blocked prompt was retried");
    assert!(job["result"].is_null());
    let images_dir = cwd.path().join("data/objects/images");
    let stored = std::fs::read_dir(&images_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(stored, 0, "an image of a blocked prompt was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_generation_and_listing_jobs_with_a_cursor() {
    let k = kiln(&[])
        .env("KILN_WORKER_QUEUES", "[maintenance,notifications]")
        .spawn();
    k.wait_http(k.http, "/readyz").await;
    let client = Client::signed_up(&k, "pager@example.com").await;
    // No worker serves the generation queue here: the jobs stay queued
    // (the sign-up code went out on `notifications`).
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = client
            .post(
                "/v1/generations",
                json!({"prompt": format!("tile {i}"), "size": "256x256"}),
            )
            .await;
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=2&cursor={c}"),
            None => "/v1/jobs?limit=2".to_owned(),
        };
        let page: Value = client.get(&path).await.json().await.unwrap();
        for j in page["jobs"].as_array().unwrap() {
            seen.push(j["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let newest_first: Vec<_> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let r = client
        .post(&format!("/v1/jobs/{}/cancel", ids[0]), json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["state"], "cancelled");
    let again = client
        .post(&format!("/v1/jobs/{}/cancel", ids[0]), json!({}))
        .await;
    assert_problem(again, 409, "conflict").await;
    let cancelled: Value = client
        .get("/v1/jobs?state=cancelled")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_tokens_are_never_stored_or_logged_in_plain_text() {
    let db = TestDatabase::postgres().await;
    let k = kiln(&[]).database(&db.url).spawn();
    k.wait_http(k.http, "/readyz").await;
    let email = "secretive@example.com";
    let client = Client::signed_up(&k, email).await;
    let token = client.token.clone().unwrap();
    let r = client
        .post(
            "/v1/generations",
            json!({"prompt": "a locked diary", "size": "256x256"}),
        )
        .await;
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    client.wait_final(&id).await;

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    // Found by its blind index, as kiln finds it.
    let kiln_store::accounts::Identifier::Email(index) = kiln_store::testing::test_pii()
        .blind(&kiln_store::accounts::Identifier::Email(email.to_owned()))
    else {
        unreachable!("an email's index is an email's")
    };
    let (hash,): (String,) =
        sqlx::query_as("SELECT password_hash FROM users WHERE email_index = $1")
            .bind(index)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(hash.starts_with("$2"), "not a bcrypt hash: {hash}");
    assert!(!hash.contains("correct horse"));
    let dump: Vec<(String,)> = sqlx::query_as(
        "SELECT row_to_json(t)::text FROM (SELECT * FROM users) t
         UNION ALL SELECT row_to_json(t)::text FROM (SELECT * FROM sessions) t
         UNION ALL SELECT row_to_json(t)::text FROM (SELECT * FROM jobs) t
         UNION ALL SELECT row_to_json(t)::text FROM (SELECT * FROM finished_jobs) t
         UNION ALL SELECT row_to_json(t)::text FROM (SELECT * FROM job_keys) t",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for (row,) in &dump {
        assert!(!row.contains("correct horse"), "password stored: {row}");
        assert!(!row.contains(&token), "token stored: {row}");
    }
    let log = k.log_text();
    for secret in ["correct horse", token.as_str(), email] {
        assert!(!log.contains(secret), "log contains {secret:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_two_workers_on_postgres_finish_500_generations_exactly_once() {
    let db = TestDatabase::postgres().await;
    let storage = tempfile::tempdir().unwrap();
    let shared = |b: common::KilnBuilder| {
        b.database(&db.url)
            .env(
                "KILN_STORAGE_ROOT",
                storage.path().join("objects").display(),
            )
            .env("KILN_STORAGE_SIGNING_KEY", "ab".repeat(32))
            // Workers derive the codes the API issues, under the same key,
            // into one outbox the test reads.
            .env("KILN_API_CODE_KEY", "cd".repeat(32))
            // Exactly what each client's 250 generations cost.
            .env("KILN_CREDITS_SIGNUP_GRANT", 250)
            .env(
                "KILN_EMAIL_OUTBOX_DIR",
                storage.path().join("outbox").display(),
            )
    };
    let api = shared(kiln(&["serve"])).spawn();
    api.wait_http(api.http, "/readyz").await;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            shared(kiln(&["work"]))
                .env("KILN_WORKER_CONCURRENCY", 8)
                .spawn()
        })
        .collect();
    for w in &workers {
        w.wait_healthy().await;
    }
    let clients = [
        Client::signed_up(&api, "one@example.com").await,
        Client::signed_up(&api, "two@example.com").await,
    ];

    let mut tasks = tokio::task::JoinSet::new();
    for batch in 0..20 {
        let client = clients[batch % 2].clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                let r = client
                    .post(
                        "/v1/generations",
                        json!({"prompt": format!("study {batch}-{i}"), "size": "256x256"}),
                    )
                    .await;
                assert_eq!(r.status(), 202);
                ids.push(
                    r.json::<Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            let mut finished = Vec::new();
            for id in ids {
                finished.push(client.wait_final(&id).await);
            }
            finished
        });
    }
    let mut jobs = Vec::new();
    while let Some(done) = tasks.join_next().await {
        jobs.extend(done.unwrap());
    }
    assert_eq!(jobs.len(), 500);
    let ids: HashSet<_> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 500);
    for job in &jobs {
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["attempt"], 1, "ran more than once: {job}");
        assert_eq!(job["result"]["images"].as_array().unwrap().len(), 1);
    }

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let (images, generations): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM generations)")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((images, generations), (500, 500));
    let failed_attempts: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT errors::text FROM jobs WHERE errors <> '[]'
             UNION SELECT DISTINCT errors::text FROM finished_jobs WHERE errors <> '[]'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        failed_attempts.is_empty(),
        "some attempts failed: {failed_attempts:?}"
    );
    // Each generation was charged once: the grant is spent, nothing held.
    for client in &clients {
        let credits: Value = client
            .get("/v1/credits?limit=100")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            (&credits["balance"], &credits["reserved"]),
            (&json!(0), &json!(0))
        );
    }
    let charges: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credit_entries WHERE kind = 'charge' AND job_id IS NOT NULL",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(charges, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_upscaled_twice_its_size_is_a_new_image_of_the_generation() {
    let k = kiln(&[]).spawn();
    k.wait_http(k.http, "/readyz").await;
    let client = Client::signed_up(&k, "enlarger@example.com").await;
    let r = client
        .post(
            "/v1/generations",
            json!({"prompt": "a small boat", "size": "256x256"}),
        )
        .await;
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let generated = client.wait_final(&id).await;
    let source = generated["result"]["images"][0].clone();
    let source_id = source["id"].as_str().unwrap();

    let upscale = |body: Value, key: &'static str| {
        client
            .request(reqwest::Method::POST, "/v1/upscales")
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let r = upscale(json!({"image_id": source_id, "scale": 2}), "up-1")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["kind"], "upscale_image");
    let again = upscale(json!({"image_id": source_id, "scale": 2}), "up-1")
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["id"], job["id"]);
    let other = upscale(json!({"image_id": source_id, "scale": 4}), "up-1")
        .await
        .unwrap();
    assert_problem(other, 409, "conflict").await;

    let done = client.wait_final(job["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["stage"], "done");
    let image = &done["result"]["image"];
    assert_ne!(image["id"], source["id"]);
    assert_eq!(image["generation_id"], source["generation_id"]);
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(512), Some(512))
    );
    let bytes = reqwest::get(k.url(image["url"].as_str().unwrap()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(decode_png(&bytes), (512, 512));

    // The generation still lists only what it generated.
    let generated = client
        .get(&format!("/v1/jobs/{id}"))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(generated["result"]["images"].as_array().unwrap().len(), 1);

    // Bad scale, unknown or foreign image.
    let r = client
        .post("/v1/upscales", json!({"image_id": source_id, "scale": 3}))
        .await;
    assert_problem(r, 422, "invalid_input").await;
    let r = client
        .post("/v1/upscales", json!({"image_id": "not-an-id"}))
        .await;
    assert_problem(r, 404, "not_found").await;
    let stranger = Client::signed_up(&k, "stranger@example.com").await;
    let r = stranger
        .post("/v1/upscales", json!({"image_id": source_id}))
        .await;
    assert_problem(r, 404, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_images_at_private_addresses_are_refused() {
    let k = kiln(&[]).spawn();
    k.wait_http(k.http, "/readyz").await;
    let client = Client::signed_up(&k, "sneaky@example.com").await;
    let refused = [
        "https://127.0.0.1/cat.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:10.0.0.1]/cat.png",
        "https://localhost/cat.png",
        // Plain http is refused before any address is looked at.
        "http://images.example/cat.png",
    ];
    for url in refused {
        let r = client
            .post(
                "/v1/generations",
                json!({"prompt": "a cat", "size": "256x256", "reference_image_urls": [url]}),
            )
            .await;
        assert_eq!(r.status(), 202, "{url}");
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let job = client.wait_final(&id).await;
        assert_eq!(job["state"], "failed", "{url}: {job}");
        let code = job["error"]["code"].as_str().unwrap();
        assert!(
            ["address_not_allowed", "scheme_not_allowed"].contains(&code),
            "{url}: {code}"
        );
        assert_eq!(job["attempt"], 1, "{url}: a refused address is not retried");
    }

    for (body, why) in [
        (
            json!({"prompt": "a cat", "reference_image_urls": ["ftp://x/cat.png"]}),
            "not http(s)",
        ),
        (
            json!({"prompt": "a cat", "reference_image_urls": ["cat.png"]}),
            "not a URL",
        ),
        (
            json!({"prompt": "a cat", "reference_image_urls": vec!["https://a.example/1.png"; 5]}),
            "too many",
        ),
        (
            json!({"prompt": "a cat", "reference_image_urls": "https://a.example/1.png"}),
            "not a list",
        ),
    ] {
        let r = client.post("/v1/generations", body).await;
        assert!(r.status() == 422, "{why}: {}", r.status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_listed_newest_first_and_deleted_at_once() {
    let cwd = tempfile::tempdir().unwrap();
    let k = kiln(&[]).cwd(cwd.path()).spawn();
    k.wait_http(k.http, "/readyz").await;
    let client = Client::signed_up(&k, "collector@example.com").await;
    let r = client
        .post(
            "/v1/generations",
            json!({"prompt": "three pebbles", "size": "256x256", "n": 3}),
        )
        .await;
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = client.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded", "{job}");

    // Two pages: 2 + 1, newest first.
    let first: Value = client.get("/v1/images?limit=2").await.json().await.unwrap();
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = client
        .get(&format!("/v1/images?limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(second["next_cursor"].is_null());
    let ids: Vec<String> = first["images"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["images"].as_array().unwrap())
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {ids:?}"
    );

    let victim = &ids[0];
    let url = first["images"][0]["url"].as_str().unwrap().to_owned();
    let stranger = Client::signed_up(&k, "vandal@example.com").await;
    let r = stranger
        .request(reqwest::Method::DELETE, &format!("/v1/images/{victim}"))
        .send()
        .await
        .unwrap();
    assert_problem(r, 404, "not_found").await;

    let r = client
        .request(reqwest::Method::DELETE, &format!("/v1/images/{victim}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Gone everywhere at once: metadata, list, bytes behind a still-valid link.
    let r = client.get(&format!("/v1/images/{victim}")).await;
    assert_problem(r, 404, "not_found").await;
    let all: Value = client.get("/v1/images").await.json().await.unwrap();
    assert_eq!(all["images"].as_array().unwrap().len(), 2);
    assert_eq!(reqwest::get(k.url(&url)).await.unwrap().status(), 404);
    assert!(
        !cwd.path()
            .join(format!("data/objects/images/{victim}.png"))
            .exists()
    );
    let r = client
        .request(reqwest::Method::DELETE, &format!("/v1/images/{victim}"))
        .send()
        .await
        .unwrap();
    assert_problem(r, 404, "not_found").await;
    let r = client.get("/v1/images?limit=0").await;
    assert_problem(r, 422, "invalid_input").await;
}
