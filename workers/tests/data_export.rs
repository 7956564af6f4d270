//! Data exports in process, on PostgreSQL and SQLite: `data_export` writes
//! one ZIP of the account (and nobody else's) into object storage and
//! enqueues the export-ready notice with the job's id; the database keeps
//! one unfinished export per account; retention deletes an export's file
//! `export_days` after it was written, and account erasure deletes them
//! all.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::{collections::BTreeMap, io::Read, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use kiln_jobs::{
    AccountPurge, DataClass, DataExport, GenerateImage, OrderId, RetentionPurge, RetentionSettings,
    SendEmail, UserId,
};
use kiln_store::{
    NewJob, Store, StoreError,
    access_log::{AccessEvent, Origin},
    generations::{GenerationEnqueued, GenerationInput, NewGeneration},
    orders::{NewOrder, Payment, PaymentNotification},
    testing::{self, TestDatabase},
};
use kiln_workers::{Clock, testing::TestWorker};
use uuid::Uuid;

kiln_store::both_databases!(
    an_export_holds_the_account_and_nothing_of_anyone_else,
    one_export_at_a_time_per_account,
    an_export_is_kept_export_days_then_deleted,
    erasing_an_account_deletes_its_exports,
);

async fn generate(store: &Store, worker: &TestWorker, owner: UserId, prompt: &str) -> Uuid {
    let enqueued = store
        .create_generation(NewGeneration {
            owner,
            input: GenerationInput {
                prompt: prompt.into(),
                model: "dev-image-1".into(),
                width: 256,
                height: 256,
                n: 1,
                reference_urls: Vec::new(),
                request_hash: Uuid::now_v7().to_string(),
                credits: 0,
                webhook: None,
                then: None,
                traceparent: None,
            },
            idempotency_key: None,
        })
        .await
        .unwrap();
    let GenerationEnqueued::Created { job } = enqueued else {
        panic!("a fresh generation: {enqueued:?}");
    };
    let payload: GenerateImage =
        serde_json::from_value(store.get(job.id).await.unwrap().unwrap().payload).unwrap();
    let generation_id = payload.generation_id;
    worker
        .perform_as(owner, payload)
        .await
        .unwrap()
        .expect_done();
    generation_id
}

async fn paid_order(store: &Store, user: UserId) -> OrderId {
    let order = OrderId(Uuid::new_v4());
    store
        .open_order(&NewOrder {
            id: order,
            user,
            provider: "dev".into(),
            pack: "starter".into(),
            credits: 100,
        })
        .await
        .unwrap();
    store
        .apply_payment(&PaymentNotification {
            provider: "dev".into(),
            event_id: format!("evt_{}", Uuid::now_v7().simple()),
            event_type: "order.paid".into(),
            payment: Some(Payment {
                order,
                account: user,
                transaction_id: format!("txn_{}", Uuid::now_v7().simple()),
                amount: 500,
                currency: "USD".into(),
                paid_at: Utc::now(),
            }),
        })
        .await
        .unwrap();
    order
}

/// The ZIP's entries by name.
fn unzip(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut entries = BTreeMap::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        entries.insert(file.name().unwrap().into_owned(), content);
    }
    entries
}

fn json(entries: &BTreeMap<String, Vec<u8>>, name: &str) -> serde_json::Value {
    serde_json::from_slice(&entries[name]).unwrap_or_else(|e| panic!("{name}: {e}"))
}

async fn an_export_holds_the_account_and_nothing_of_anyone_else(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let user = testing::account(&store).await;
    let other = testing::account(&store).await;
    store.grant_credits(user, 10, "test").await.unwrap();
    let mut generations = Vec::new();
    for prompt in ["a harbour at dawn", "a lighthouse", "gulls over the pier"] {
        generations.push(generate(&store, &worker, user, prompt).await);
    }
    let others = generate(&store, &worker, other, "someone else's secret garden").await;
    let origin = Origin {
        ip: Some("203.0.113.7".into()),
        user_agent: Some("test".into()),
    };
    for event in [AccessEvent::Login, AccessEvent::Logout] {
        store
            .record_access(Some(user), event, &origin)
            .await
            .unwrap();
    }
    let order = paid_order(&store, user).await;

    let performed = worker.perform_as(user, DataExport { user }).await.unwrap();
    let export_id = performed.job_id;
    let result = performed.expect_done();
    assert_eq!(
        result.object_key,
        format!("exports/{}/{export_id}.zip", user.0)
    );
    let bytes = worker
        .objects()
        .get(&result.object_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.bytes, bytes.len() as u64);
    let entries = unzip(&bytes);

    // The manifest counts what the store holds of this account.
    let manifest = json(&entries, "manifest.json");
    assert_eq!(manifest["schema_version"], 1);
    assert!(manifest["generated_at"].is_string());
    let counts = &manifest["counts"];
    let access = store.access_log(user, None, 1000).await.unwrap().len();
    let credits = store.credit_entries(user, None, 1000).await.unwrap().len();
    let decisions = store.moderation_page(user, None, 1000).await.unwrap().len();
    assert!(
        access >= 2 && credits >= 1 && decisions >= 3,
        "{access} {credits} {decisions}"
    );
    assert_eq!(counts["account.json"], 1);
    assert_eq!(counts["generations.json"], 3);
    assert_eq!(counts["images.json"], 3);
    assert_eq!(counts["images"], 3);
    assert_eq!(counts["payments.json"], 1);
    assert_eq!(counts["access_log.json"], access as u64);
    assert_eq!(counts["credits.json"], credits as u64);
    assert_eq!(counts["moderation.json"], decisions as u64);
    assert_eq!(serde_json::to_value(&result.counts).unwrap(), *counts);
    // Each file holds as many as the manifest says.
    for (file, count) in counts.as_object().unwrap() {
        if file.ends_with(".json") && file != "account.json" {
            let items = json(&entries, file);
            assert_eq!(
                items.as_array().unwrap().len() as u64,
                count.as_u64().unwrap(),
                "{file}"
            );
        }
    }

    // The account, its addresses opened.
    let account = json(&entries, "account.json");
    let profile = store.profile(user).await.unwrap().unwrap();
    assert_eq!(account["id"], serde_json::json!(user.0));
    assert_eq!(account["email"], serde_json::json!(profile.email));
    assert!(account["email"].as_str().unwrap().ends_with("@example.com"));
    assert_eq!(
        account["referral_code"],
        serde_json::json!(profile.referral_code)
    );
    assert_eq!(account["restricted"], false);

    let listed = json(&entries, "generations.json");
    let mut ids: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = generations.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(ids, expected);
    let first = &listed[0];
    assert_eq!(first["model"], "dev-image-1");
    assert_eq!(first["size"], "256x256");
    assert_eq!(first["n"], 1);
    assert_eq!(first["provider"], "dev");
    assert!(first["provider_latency_ms"].is_number());
    assert_eq!(
        json(&entries, "payments.json")[0]["id"],
        serde_json::json!(order.0)
    );

    // Every image decodes as a PNG.
    let images: Vec<&String> = entries
        .keys()
        .filter(|k| k.starts_with("images/"))
        .collect();
    assert_eq!(images.len(), 3);
    for name in images {
        assert!(name.ends_with(".png"), "{name}");
        let decoder = png::Decoder::new(std::io::Cursor::new(&entries[name]));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut pixels).unwrap();
    }

    // Nothing of the other account.
    let whole = entries
        .values()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect::<String>();
    assert!(!whole.contains("secret garden"));
    assert!(!whole.contains(&others.to_string()));
    assert!(!whole.contains(&other.0.to_string()));
    for image in store.images_of_owner(other, None, 10).await.unwrap() {
        assert!(!whole.contains(&image.id.to_string()));
    }

    // The notice waits with the export's id, never a link or an address.
    let queued = store
        .claim(
            "test",
            &["notifications".to_owned()],
            10,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let notices: Vec<_> = queued.iter().filter(|j| j.kind == "send_email").collect();
    assert_eq!(notices.len(), 1, "{queued:?}");
    let payload = &notices[0].payload;
    assert_eq!(payload["notice"]["template"], "export_finished");
    assert_eq!(payload["notice"]["export_id"], serde_json::json!(export_id));
    assert!(!payload.to_string().contains("signature"));
    assert!(!payload.to_string().contains("@example.com"));
    // Sent without a public base URL, it points at the route.
    let notice: SendEmail = serde_json::from_value(payload.clone()).unwrap();
    worker.perform(notice.clone()).await.unwrap().expect_done();
    let sent = worker.emails();
    assert!(
        sent.iter()
            .any(|e| e.contains(&format!("/v1/me/exports/{export_id}"))),
        "{sent:?}"
    );
    // Where kiln's public address is known, the link itself, signed now.
    let public = TestWorker::new(store.clone())
        .with_objects(worker.objects().clone())
        .with_deps(|deps| deps.links.public_base_url = Some("https://kiln.example".into()));
    public.perform(notice).await.unwrap().expect_done();
    let sent = public.emails();
    let link = format!(
        "https://kiln.example/v1/files/exports/{}/{export_id}.zip?expires=",
        user.0
    );
    assert!(sent.iter().any(|e| e.contains(&link)), "{sent:?}");
    // Once the file is gone, there is nothing to announce.
    worker.objects().delete(&result.object_key).await.unwrap();
    let error = public
        .perform(serde_json::from_value::<SendEmail>(payload.clone()).unwrap())
        .await
        .unwrap()
        .expect_error();
    assert_eq!(error.code(), "export_gone");
}

async fn one_export_at_a_time_per_account(store: Store, _: &TestDatabase) {
    let user = testing::account(&store).await;
    let other = testing::account(&store).await;
    let export = |user: UserId, key: Option<&str>| {
        let mut job = NewJob::of(&DataExport { user }).unwrap().owner(user);
        job.idempotency_key = key.map(str::to_owned);
        job
    };
    let first = store.enqueue(export(user, Some("k1"))).await.unwrap();
    assert!(first.created);
    // The same key: the same export.
    let again = store.enqueue(export(user, Some("k1"))).await.unwrap();
    assert_eq!((again.id, again.created), (first.id, false));
    // Another request while it is unfinished: refused, key and all.
    for key in [None, Some("k2")] {
        assert!(matches!(
            store.enqueue(export(user, key)).await,
            Err(StoreError::OneAtATime)
        ));
    }
    // Another account is not held up.
    assert!(store.enqueue(export(other, None)).await.unwrap().created);
    // Once it ended, the next may start (and k2 was never taken).
    let cancelled = store.cancel(first.id, Some(user)).await.unwrap();
    assert!(
        format!("{cancelled:?}").contains("Cancelled"),
        "{cancelled:?}"
    );
    assert!(
        store
            .enqueue(export(user, Some("k2")))
            .await
            .unwrap()
            .created
    );
}

/// A purge at `now`, and what it deleted of exports.
async fn purge_exports_at(worker: &TestWorker, now: DateTime<Utc>) -> u64 {
    let purger = TestWorker::with_retention(
        worker.store().clone(),
        &RetentionSettings::default(),
        Clock::fixed(now),
    )
    .with_objects(worker.objects().clone());
    purger
        .perform(RetentionPurge {})
        .await
        .unwrap()
        .expect_done()
        .purged[&DataClass::Exports]
}

async fn an_export_is_kept_export_days_then_deleted(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let user = testing::account(&store).await;
    let before = Utc::now();
    let result = worker
        .perform_as(user, DataExport { user })
        .await
        .unwrap()
        .expect_done();
    let after = Utc::now();
    let days = TimeDelta::days(i64::from(RetentionSettings::default().export_days));
    let minute = TimeDelta::minutes(1);
    // Just inside its days (counted from when it was written): kept.
    assert_eq!(purge_exports_at(&worker, before + days - minute).await, 0);
    assert!(worker.objects().exists(&result.object_key).await.unwrap());
    // Just past them: gone.
    assert_eq!(purge_exports_at(&worker, after + days + minute).await, 1);
    assert!(!worker.objects().exists(&result.object_key).await.unwrap());
    assert_eq!(purge_exports_at(&worker, after + days + minute).await, 0);
}

async fn erasing_an_account_deletes_its_exports(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let user = testing::account(&store).await;
    let result = worker
        .perform_as(user, DataExport { user })
        .await
        .unwrap()
        .expect_done();
    assert!(worker.objects().exists(&result.object_key).await.unwrap());
    store.delete_account(user).await.unwrap().unwrap();
    worker
        .perform(AccountPurge { user })
        .await
        .unwrap()
        .expect_done();
    assert!(!worker.objects().exists(&result.object_key).await.unwrap());
}

/// The benchmark the README quotes: an account with 10,000 images (32x32
/// noise PNGs, about 3 KiB each, stored straight through the store into
/// local files; no provider is called), exported on SQLite. Prints the
/// time and the process's peak RSS during the export (the peak is reset
/// just before it, `/proc/self/clear_refs`). By hand:
/// `cargo test --release -p kiln-workers --test data_export -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand"]
async fn bench_export_of_10_000_images() {
    use kiln_store::generations::ImageRecord;
    // `KILN_BENCH_IMAGES` compares other sizes (the peak should not move).
    let images: usize = std::env::var("KILN_BENCH_IMAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let db = TestDatabase::sqlite();
    let store = db.store().await.unwrap();
    let files = tempfile::tempdir().unwrap();
    let objects = kiln_store::Objects::local(files.path()).unwrap();
    let worker = TestWorker::new(store.clone()).with_objects(objects.clone());
    let user = testing::account(&store).await;
    let enqueued = store
        .create_generation(NewGeneration {
            owner: user,
            input: GenerationInput {
                prompt: "ten thousand tiles".into(),
                model: "dev-image-1".into(),
                width: 32,
                height: 32,
                n: 1,
                reference_urls: Vec::new(),
                request_hash: Uuid::now_v7().to_string(),
                credits: 0,
                webhook: None,
                then: None,
                traceparent: None,
            },
            idempotency_key: None,
        })
        .await
        .unwrap();
    let GenerationEnqueued::Created { job } = enqueued else {
        panic!("{enqueued:?}");
    };
    let generation = store.generation_for_job(job.id).await.unwrap().unwrap();
    store.cancel(job.id, Some(user)).await.unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..images {
        let mut pixels = vec![0u8; 32 * 32 * 3];
        for p in &mut pixels {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *p = seed as u8;
        }
        let mut png_bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut png_bytes, 32, 32);
        encoder.set_color(png::ColorType::Rgb);
        encoder
            .write_header()
            .unwrap()
            .write_image_data(&pixels)
            .unwrap();
        let id = Uuid::now_v7();
        let key = format!("images/{id}.png");
        let size = png_bytes.len() as i64;
        objects.put(&key, png_bytes.into()).await.unwrap();
        store
            .add_image(&ImageRecord {
                id,
                generation_id: generation.id,
                owner: user,
                object_key: key,
                width: 32,
                height: 32,
                content_type: "image/png".into(),
                bytes: size,
                created_at: Utc::now(),
                source_image_id: None,
            })
            .await
            .unwrap();
    }
    let rss = |field: &str| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .map_or(0, |kib| kib.parse::<u64>().unwrap())
    };
    // Forget the setup's peak: from here VmHWM is the export's.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = rss("VmRSS:");
    let started = std::time::Instant::now();
    let result = worker
        .perform_as(user, DataExport { user })
        .await
        .unwrap()
        .expect_done();
    let took = started.elapsed();
    let peak = rss("VmHWM:");
    assert_eq!(result.counts["images"], images as u64);
    println!(
        "export of {images} images: {:.1} MiB ZIP in {:.2} s; RSS before {} MiB, peak during {} MiB",
        result.bytes as f64 / 1048576.0,
        took.as_secs_f64(),
        before / 1024,
        peak / 1024
    );
}
