//! Each handler run in process through `kiln_workers::testing::TestWorker`,
//! on PostgreSQL and SQLite: a real jobs row, claim and context, the
//! offline dev providers, and the row left as a real run leaves it.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use kiln_jobs::{
    GenerateImage, JobError, Notice, Probe, ProbeFailure, SendEmail, SendSms, UpscaleImage, stage,
};
use kiln_providers::images::{DevGenerator, ImageGenerator, ImageRequest};
use kiln_store::{
    JobRecord, JobState, Store,
    accounts::{Identifier, NewUser},
    generations::{GenerationEnqueued, ModerationSubject, NewGeneration},
    testing::{self, TestDatabase},
};
use kiln_workers::testing::TestWorker;
use uuid::Uuid;

kiln_store::both_databases!(
    generate_image_stores_moderated_pngs,
    stored_images_carry_no_prompt_or_owner,
    blocked_prompt_fails_permanently_without_images,
    upscale_image_stores_a_larger_image_from_its_source,
    upscale_without_an_owner_fails_permanently,
    send_email_reaches_the_accounts_address,
    send_sms_reaches_the_accounts_phone,
    send_email_to_a_user_without_email_fails_permanently,
    an_account_code_is_derived_when_sent_and_only_while_live,
    probe_reports_its_attempt_and_worker,
    failing_probe_is_retried_or_failed_as_told,
    a_reference_image_is_kept_and_passed_on_without_its_metadata,
);

async fn row(store: &Store, id: Uuid) -> JobRecord {
    store.get(id).await.unwrap().unwrap()
}

/// A generation of `n` 256×256 images of `prompt`, by a fresh account.
async fn generation(store: &Store, prompt: &str, n: u32) -> (kiln_jobs::UserId, GenerateImage) {
    let owner = testing::account(store).await;
    let enqueued = store
        .create_generation(NewGeneration {
            owner,
            input: kiln_store::generations::GenerationInput {
                prompt: prompt.into(),
                model: "dev-image-1".into(),
                width: 256,
                height: 256,
                n,
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
    let generation = row(store, job.id).await.payload;
    (owner, serde_json::from_value(generation).unwrap())
}

/// A PNG's width and height, from its header.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

async fn generate_image_stores_moderated_pngs(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let (owner, job) = generation(&store, "a lighthouse at dusk", 2).await;
    let performed = worker.perform_as(owner, job.clone()).await.unwrap();
    let job_id = performed.job_id;
    let result = performed.expect_done();

    assert_eq!(result.generation_id, job.generation_id);
    assert_eq!(result.images.len(), 2);
    let rows = store.images_of_generation(job.generation_id).await.unwrap();
    assert_eq!(rows.len(), 2);
    for image in &result.images {
        assert_eq!((image.width, image.height), (256, 256));
        let stored = rows.iter().find(|r| r.id == image.id).unwrap();
        assert_eq!(stored.owner, owner);
        assert_eq!(stored.source_image_id, None);
        let bytes = worker.objects().get(&stored.object_key).await.unwrap();
        assert_eq!(png_size(&bytes.unwrap()), (256, 256));
    }

    let decisions = store
        .moderation_of_generation(job.generation_id)
        .await
        .unwrap();
    let subjects: Vec<_> = decisions.iter().map(|d| d.subject).collect();
    assert_eq!(
        subjects,
        [
            ModerationSubject::Prompt,
            ModerationSubject::Image,
            ModerationSubject::Image
        ]
    );
    assert!(decisions.iter().all(|d| d.allowed && d.provider == "dev"));

    let job_row = row(&store, job_id).await;
    assert_eq!(job_row.state, JobState::Succeeded);
    assert_eq!(job_row.stage.as_deref(), Some(stage::DONE));
    assert_eq!(job_row.progress, 100);
    assert_eq!(job_row.attempt, 1);
    assert_eq!(
        job_row.result,
        Some(serde_json::to_value(&result).unwrap()),
        "the stored result is the typed one"
    );
}

/// A PNG decoded whole: its pixels and whether it has any text or EXIF.
fn decode_png(bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    pixels.truncate(frame.buffer_size());
    reader.finish().unwrap();
    let info = reader.info();
    let metadata = !info.uncompressed_latin1_text.is_empty()
        || !info.compressed_latin1_text.is_empty()
        || !info.utf8_text.is_empty()
        || info.exif_metadata.is_some();
    (pixels, metadata)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn stored_images_carry_no_prompt_or_owner(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let prompt = "a lighthouse at dusk, painted for Ada Lovelace";
    let (owner, job) = generation(&store, prompt, 2).await;
    let result = worker.perform_as(owner, job).await.unwrap().expect_done();

    // What the dev generator hands over embeds the prompt (for the dev
    // moderator); the stored copies keep its pixels and nothing else.
    let rendered = DevGenerator
        .generate(&ImageRequest {
            prompt: prompt.to_owned(),
            model: "dev-image-1".to_owned(),
            width: 256,
            height: 256,
            n: 2,
            reference_urls: Vec::new(),
        })
        .await
        .unwrap();
    assert!(contains(&rendered[0].png, prompt.as_bytes()));

    let owner_forms = [
        owner.to_string().into_bytes(),
        owner.0.simple().to_string().into_bytes(),
        owner.0.as_bytes().to_vec(),
    ];
    assert_eq!(result.images.len(), 2);
    for (image, rendered) in result.images.iter().zip(&rendered) {
        let record = store.image(image.id, owner).await.unwrap().unwrap();
        let bytes = worker
            .objects()
            .get(&record.object_key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.bytes, bytes.len() as i64);
        assert!(!contains(&bytes, prompt.as_bytes()), "the prompt is stored");
        for owner in &owner_forms {
            assert!(!contains(&bytes, owner), "the owner's id is stored");
        }
        let (pixels, metadata) = decode_png(&bytes);
        assert!(!metadata, "a stored image has text or EXIF chunks");
        assert_eq!(pixels, decode_png(&rendered.png).0, "the pixels changed");
    }
}

async fn blocked_prompt_fails_permanently_without_images(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let (owner, job) = generation(&store, "a gore scene", 1).await;
    let performed = worker.perform_as(owner, job.clone()).await.unwrap();
    let job_id = performed.job_id;
    let error = performed.expect_error();

    assert_eq!(error.code(), "content_blocked");
    assert!(matches!(error, JobError::Permanent { .. }), "{error:?}");
    assert!(
        store
            .images_of_generation(job.generation_id)
            .await
            .unwrap()
            .is_empty()
    );
    let decisions = store
        .moderation_of_generation(job.generation_id)
        .await
        .unwrap();
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].subject, ModerationSubject::Prompt);
    assert!(!decisions[0].allowed);

    let job_row = row(&store, job_id).await;
    assert_eq!(
        job_row.state,
        JobState::Failed,
        "no retry for a permanent error"
    );
    assert_eq!(job_row.attempt, 1);
    assert_eq!(job_row.errors.len(), 1);
    assert_eq!(job_row.errors[0].code, "content_blocked");
    assert!(job_row.errors[0].permanent);
}

async fn upscale_image_stores_a_larger_image_from_its_source(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let (owner, job) = generation(&store, "a red bicycle", 1).await;
    let source = worker.perform_as(owner, job).await.unwrap().expect_done();
    let source_id = source.images[0].id;

    let performed = worker
        .perform_as(
            owner,
            UpscaleImage {
                image_id: source_id,
                scale: 2,
            },
        )
        .await
        .unwrap();
    let job_id = performed.job_id;
    let result = performed.expect_done();

    assert_eq!(result.source_image_id, source_id);
    assert_ne!(result.image_id, source_id);
    assert_eq!((result.width, result.height), (512, 512));
    assert_eq!(result.provider, "dev");
    let image = store.image(result.image_id, owner).await.unwrap().unwrap();
    assert_eq!(image.source_image_id, Some(source_id));
    assert_eq!((image.width, image.height), (512, 512));
    let bytes = worker.objects().get(&image.object_key).await.unwrap();
    assert_eq!(png_size(&bytes.unwrap()), (512, 512));
    assert_eq!(row(&store, job_id).await.state, JobState::Succeeded);
}

async fn upscale_without_an_owner_fails_permanently(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let performed = worker
        .perform(UpscaleImage {
            image_id: Uuid::now_v7(),
            scale: 2,
        })
        .await
        .unwrap();
    let job_id = performed.job_id;
    let error = performed.expect_error();
    assert_eq!(error.code(), "owner_missing");
    assert!(matches!(error, JobError::Permanent { .. }));
    assert_eq!(row(&store, job_id).await.state, JobState::Failed);
}

fn code() -> Notice {
    Notice::VerificationCode {
        code: "482913".into(),
        minutes_valid: 10,
    }
}

async fn send_email_reaches_the_accounts_address(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let user_id = testing::account(&store).await;
    let address = store
        .contacts(user_id)
        .await
        .unwrap()
        .unwrap()
        .email
        .unwrap();

    let performed = worker
        .perform(SendEmail {
            user_id,
            notice: code(),
        })
        .await
        .unwrap();
    let job_id = performed.job_id;
    let sent = performed.expect_done();

    assert_eq!(sent.provider, "dev");
    let emails = worker.emails();
    assert_eq!(emails.len(), 1);
    assert!(
        emails[0].contains(&format!("To: {address}\n")),
        "{}",
        emails[0]
    );
    assert!(emails[0].contains("482913"), "{}", emails[0]);
    assert!(worker.texts().is_empty());
    assert_eq!(row(&store, job_id).await.state, JobState::Succeeded);
}

async fn send_sms_reaches_the_accounts_phone(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let n = Uuid::now_v7().as_u128() % 10_000_000;
    let phone = format!("+1555{n:07}");
    let user_id = store
        .create_user(NewUser {
            identifier: Identifier::Phone(phone.clone()),
            password_hash: "$2b$04$test.account.password.hash.is.never.checked".into(),
            birth_date: chrono::NaiveDate::from_ymd_opt(1990, 12, 10).unwrap(),
            referral_code: Uuid::now_v7().simple().to_string(),
            referred_by_code: None,
            locale: Default::default(),
        })
        .await
        .unwrap()
        .id()
        .unwrap();

    let sent = worker
        .perform(SendSms {
            user_id,
            notice: code(),
        })
        .await
        .unwrap()
        .expect_done();

    assert_eq!(sent.provider, "dev");
    let texts = worker.texts();
    assert_eq!(texts.len(), 1);
    assert!(
        texts[0].starts_with(&format!("To: {phone}\n")),
        "{}",
        texts[0]
    );
    assert!(texts[0].contains("482913"), "{}", texts[0]);
    assert!(worker.emails().is_empty());
}

async fn send_email_to_a_user_without_email_fails_permanently(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let performed = worker
        .perform(SendEmail {
            user_id: kiln_jobs::UserId(Uuid::now_v7()),
            notice: code(),
        })
        .await
        .unwrap();
    let job_id = performed.job_id;
    let error = performed.expect_error();
    assert_eq!(error.code(), "user_missing");
    assert!(matches!(error, JobError::Permanent { .. }));
    assert!(worker.emails().is_empty());
    assert_eq!(row(&store, job_id).await.state, JobState::Failed);
}

async fn probe_reports_its_attempt_and_worker(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let performed = worker.perform(Probe::default()).await.unwrap();
    let job_id = performed.job_id;
    let result = performed.expect_done();

    assert_eq!(result.job_id, job_id);
    assert_eq!(result.attempt, 1);
    let job_row = row(&store, job_id).await;
    assert_eq!(job_row.state, JobState::Succeeded);
    assert!(
        result.worker.starts_with("test-worker-"),
        "{}",
        result.worker
    );
    assert!(job_row.token > 0, "the attempt ran under a claim");
}

async fn failing_probe_is_retried_or_failed_as_told(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());

    let transient = worker
        .perform(Probe {
            fail: Some(ProbeFailure::Transient),
            ..Probe::default()
        })
        .await
        .unwrap();
    let job_id = transient.job_id;
    assert!(matches!(
        transient.expect_error(),
        JobError::Transient { .. }
    ));
    let job_row = row(&store, job_id).await;
    assert_eq!(
        job_row.state,
        JobState::Retryable,
        "a transient failure before the last attempt is retried"
    );
    assert_eq!(job_row.errors.len(), 1);
    assert!(!job_row.errors[0].permanent);

    let permanent = worker
        .perform(Probe {
            fail: Some(ProbeFailure::Permanent),
            ..Probe::default()
        })
        .await
        .unwrap();
    let job_id = permanent.job_id;
    assert!(matches!(
        permanent.expect_error(),
        JobError::Permanent { .. }
    ));
    assert_eq!(row(&store, job_id).await.state, JobState::Failed);

    let panicked = worker
        .perform(Probe {
            panic: true,
            ..Probe::default()
        })
        .await
        .unwrap()
        .expect_error();
    assert_eq!(panicked.code(), "panic", "caught as the runtime catches it");
}

async fn an_account_code_is_derived_when_sent_and_only_while_live(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let keys = worker.deps().codes.clone();
    let user_id = testing::account(&store).await;
    let issue = |id: Uuid| {
        let code = keys.code(id);
        kiln_store::accounts::NewCode {
            id,
            user_id,
            code_hash: keys.code_hash(user_id, &code),
            expires_at: chrono::Utc::now() + chrono::Duration::minutes(10),
            contact: None,
        }
    };
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    store.issue_code(issue(first)).await.unwrap();
    let notice = |code_id| Notice::AccountVerification {
        code_id,
        minutes_valid: 10,
    };
    let performed = worker
        .perform(SendEmail {
            user_id,
            notice: notice(first),
        })
        .await
        .unwrap();
    let job_id = performed.job_id;
    performed.expect_done();
    let emails = worker.emails();
    assert_eq!(emails.len(), 1);
    assert!(emails[0].contains(&keys.code(first)), "{}", emails[0]);
    // The queue held the row's id, never the code.
    let payload = row(&store, job_id).await.payload.to_string();
    assert!(!payload.contains(&keys.code(first)), "{payload}");

    // Replaced by a newer code: the old one is not sent.
    store.issue_code(issue(second)).await.unwrap();
    let error = worker
        .perform(SendEmail {
            user_id,
            notice: notice(first),
        })
        .await
        .unwrap()
        .expect_error();
    assert_eq!(error.code(), "code_not_live");
    assert!(matches!(error, JobError::Permanent { .. }));
    assert_eq!(worker.emails().len(), 1);
}

/// A 4x4 PNG with a text chunk, as a phone or an editor writes one.
fn png_with_text(keyword: &str, text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 4, 4);
    encoder.set_color(png::ColorType::Rgb);
    encoder.add_text_chunk(keyword.into(), text.into()).unwrap();
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&[200u8; 4 * 4 * 3]).unwrap();
    writer.finish().unwrap();
    out
}

async fn a_reference_image_is_kept_and_passed_on_without_its_metadata(
    store: Store,
    _: &TestDatabase,
) {
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};
    let photo = png_with_text("Location", "GPS 51.5007N 0.1246W, Ada's phone");
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(photo.clone(), "image/png"))
        .mount(&server)
        .await;
    let worker = TestWorker::new(store.clone()).with_deps(|d| {
        // The fake serves plain http on 127.0.0.1: allowed for this test only.
        d.fetcher = std::sync::Arc::new(kiln_providers::fetch::GuardedFetcher::new(
            kiln_providers::fetch::FetchPolicy {
                allow_http: true,
                allow_private_addresses: true,
                ..Default::default()
            },
        ));
    });
    let owner = testing::account(&store).await;
    let enqueued = store
        .create_generation(NewGeneration {
            owner,
            input: kiln_store::generations::GenerationInput {
                prompt: "a lighthouse like this one".into(),
                model: "dev-image-1".into(),
                width: 256,
                height: 256,
                n: 1,
                reference_urls: vec![format!("{}/photo.png", server.uri())],
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
    let payload: GenerateImage = serde_json::from_value(row(&store, job.id).await.payload).unwrap();
    worker
        .perform_as(owner, payload)
        .await
        .unwrap()
        .expect_done();

    let generation = store.generation_for_job(job.id).await.unwrap().unwrap();
    let key = format!("refs/{}/0.png", generation.id);
    let kept = worker.objects().get(&key).await.unwrap().unwrap();
    assert!(
        photo.windows(3).any(|w| w == b"GPS"),
        "the photo had its location"
    );
    assert!(
        !kept.windows(3).any(|w| w == b"GPS"),
        "the kept copy has none"
    );
    assert!(!kept.windows(8).any(|w| w == b"Location"));
    assert_eq!(png_size(&kept), (4, 4), "the pixels stay");
}
