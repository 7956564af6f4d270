//! Moderation decisions round-trip on both databases, allowed and blocked,
//! with their categories and every score.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;

use chrono::{DurationRound, TimeDelta, Utc};
use kiln_store::{
    Store,
    generations::{ModerationRecord, ModerationSubject},
    testing::TestDatabase,
};
use uuid::Uuid;

kiln_store::both_databases!(decisions_round_trip);

async fn decisions_round_trip(store: Store, _: &TestDatabase) {
    let generation = Uuid::now_v7();
    let owner = kiln_jobs::UserId(Uuid::now_v7());
    // Both databases keep milliseconds or finer.
    let at = Utc::now()
        .duration_trunc(TimeDelta::milliseconds(1))
        .unwrap();
    let prompt = ModerationRecord {
        id: Uuid::now_v7(),
        owner,
        generation_id: Some(generation),
        subject: ModerationSubject::Prompt,
        provider: "openai".into(),
        allowed: true,
        categories: vec![],
        scores: BTreeMap::from([("violence".into(), 0.02), ("sexual".into(), 0.001)]),
        created_at: at,
    };
    let image = ModerationRecord {
        id: Uuid::now_v7(),
        subject: ModerationSubject::Image,
        allowed: false,
        categories: vec!["violence/graphic".into()],
        scores: BTreeMap::from([("violence/graphic".into(), 0.91)]),
        created_at: at + TimeDelta::milliseconds(5),
        ..prompt.clone()
    };
    store.record_moderation(&prompt).await.unwrap();
    store.record_moderation(&image).await.unwrap();
    assert_eq!(
        store.moderation_of_generation(generation).await.unwrap(),
        vec![prompt, image]
    );
    assert!(
        store
            .moderation_of_generation(Uuid::now_v7())
            .await
            .unwrap()
            .is_empty()
    );
}
