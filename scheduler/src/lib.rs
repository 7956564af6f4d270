//! Cron plans. Every replica computes the same slots and enqueues each
//! slot's job with the idempotency key `plan:slot`, so N schedulers fire a
//! slot once (apalis-cron would fire it once per replica).

mod config;
mod plan;
mod runner;

pub use config::SchedulerConfig;
pub use plan::{Plan, plans};
pub use runner::{fire_due, run};
