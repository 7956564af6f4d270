//! Two `kiln work` processes share one provider limit through Redis: the
//! fake mail API never sees more than the configured rate plus its
//! one-second burst, however many jobs both workers hold.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::NaiveDate;
use common::{kiln, wait_job};
use kiln_jobs::{Notice, SendEmail};
use kiln_store::{
    JobState, NewJob,
    accounts::{Identifier, NewUser},
    testing::TestDatabase,
};
use serde_json::json;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::method};

/// Answers like the mail API and notes when each request arrived.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<Instant>>>);

impl Respond for Arrivals {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.0.lock().unwrap().push(Instant::now());
        ResponseTemplate::new(200).set_body_json(json!({"id": "em_1"}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_together_keep_to_the_providers_rate() {
    const RATE: usize = 5;
    const JOBS: usize = 20;
    let arrivals = Arrivals::default();
    let mail = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(arrivals.clone())
        .mount(&mail)
        .await;

    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let user = store
        .create_user(NewUser {
            identifier: Identifier::Email("many@example.com".into()),
            password_hash: "$2b$04$notusedbythistestnotusedbythistestnotusedbythi".into(),
            birth_date: NaiveDate::from_ymd_opt(1990, 1, 1).unwrap(),
            referral_code: "RATE0001".into(),
            referred_by_code: None,
            locale: Default::default(),
        })
        .await
        .unwrap()
        .id()
        .expect("a new account");
    let prefix = format!("kiln-test:{}:", uuid::Uuid::now_v7());
    let workers: Vec<_> = (0..2)
        .map(|_| {
            kiln(&["work"])
                .database(&db.url)
                .env("KILN_WORKER_CONCURRENCY", 16)
                .env("KILN_EMAIL_PROVIDER", "http")
                .env("KILN_EMAIL_HTTP_BASE_URL", mail.uri())
                .env("KILN_EMAIL_HTTP_API_KEY", "re_test_key")
                .env("KILN_EMAIL_FROM", "noreply@kiln.example")
                .env("KILN_RATE_LIMITS_REDIS_URL", "redis://127.0.0.1:6379")
                .env("KILN_RATE_LIMITS_KEY_PREFIX", &prefix)
                .env(
                    "KILN_RATE_LIMITS_PROVIDERS",
                    format!("{{email={{requests_per_second={RATE}}}}}"),
                )
                .spawn()
        })
        .collect();
    for w in &workers {
        w.wait_healthy().await;
    }

    let jobs: Vec<_> = (0..JOBS)
        .map(|i| {
            NewJob::of(&SendEmail {
                user_id: user,
                notice: Notice::SecurityNotice {
                    subject: "Rate test".into(),
                    body: format!("notice {i}"),
                },
            })
            .unwrap()
        })
        .collect();
    let ids = store.enqueue_many(jobs).await.unwrap();
    for id in ids {
        let job = wait_job(&store, id, "finished", |j| j.state.is_final()).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    }

    let mut at = arrivals.0.lock().unwrap().clone();
    at.sort();
    assert_eq!(at.len(), JOBS, "each email sent once");
    // Counts, not timings: a slow machine can only spread requests out.
    // GCRA allows a burst of RATE, then RATE per second, so any one-second
    // window holds at most 2 * RATE, and JOBS requests need at least
    // (JOBS - RATE) / RATE seconds.
    let busiest = (0..at.len())
        .map(|i| {
            at[i..]
                .iter()
                .take_while(|t| t.duration_since(at[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest <= 2 * RATE,
        "{busiest} requests within one second; the limit is {RATE}/s plus a burst of {RATE}"
    );
    let span = at[JOBS - 1].duration_since(at[0]);
    let least = Duration::from_secs_f64((JOBS - 2 * RATE) as f64 / RATE as f64);
    assert!(
        span >= least,
        "{JOBS} requests in {span:?}: faster than {RATE}/s allows"
    );
    drop(workers);
}
