//! Cron plans. Every replica computes the same slots; the database decides
//! which one fires each slot (`kiln_store::schedules`), so N schedulers
//! fire a slot once (apalis-cron would fire it once per replica), a late
//! replica never fires an older slot after a newer one, and a plan whose
//! last run has not finished skips the slot instead of running twice.

mod config;
mod plan;
mod runner;

pub use config::SchedulerConfig;
pub use plan::{Plan, plans};
pub use runner::{catch_up, fire, latest_due, next_fires, run};
