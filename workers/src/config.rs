use std::time::Duration;

use serde::Deserialize;

/// How one `kiln work` process runs jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs this process runs at once.
    pub concurrency: u32,
    /// Queues to take jobs from; empty means every queue kiln knows.
    pub queues: Vec<String>,
    /// Jobs claimed in one query while the queues keep up.
    pub batch_size: u32,
    /// Under a backlog claims grow from `batch_size` up to this many (never
    /// beyond the free slots): fewer round trips and commits per job.
    pub max_batch_size: u32,
    /// How long a claim stays valid without a heartbeat. A worker that dies
    /// loses its jobs to another after this long.
    #[serde(with = "crate::config::millis")]
    pub lease_ms: Duration,
    /// Fallback poll while idle, for scheduled jobs coming due and missed
    /// wake-ups (Postgres NOTIFY wakes workers at once otherwise).
    #[serde(with = "crate::config::millis")]
    pub poll_interval_ms: Duration,
    /// On SIGTERM, how long running jobs may finish before they are handed
    /// back (without spending an attempt).
    #[serde(with = "crate::config::millis")]
    pub shutdown_grace_ms: Duration,
    /// How often expired leases are rescued and queue gauges refreshed.
    #[serde(with = "crate::config::millis")]
    pub maintenance_interval_ms: Duration,
    /// A job whose worker is lost this many times ends `failed`.
    pub crash_loop_cap: u32,
    /// Accounts a `notify_users` fan-out queues notices for in one
    /// transaction (a killed fan-out redoes at most one batch's reads).
    pub notify_batch: u32,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 16,
            queues: Vec::new(),
            batch_size: 10,
            max_batch_size: 100,
            lease_ms: Duration::from_secs(30),
            poll_interval_ms: Duration::from_secs(1),
            shutdown_grace_ms: Duration::from_secs(25),
            maintenance_interval_ms: Duration::from_secs(5),
            crash_loop_cap: 3,
            notify_batch: crate::handlers::DEFAULT_NOTIFY_BATCH,
        }
    }
}

/// A bad `[worker]` setting; the text names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WorkerConfigError {
    #[error("worker.concurrency must be at least 1")]
    Concurrency,
    #[error("worker.batch_size must be at least 1")]
    BatchSize,
    #[error("worker.max_batch_size must be at least worker.batch_size")]
    MaxBatchSize,
    #[error("worker.lease_ms must be at least 500")]
    Lease,
    #[error("worker.poll_interval_ms must be above 0")]
    PollInterval,
    #[error("worker.crash_loop_cap must be at least 1")]
    CrashLoopCap,
    #[error("worker.notify_batch must be 1 to 10000")]
    NotifyBatch,
    #[error("worker.queues must not contain an empty name")]
    EmptyQueueName,
}

impl WorkerConfig {
    /// Checks the settings; the error names the bad one.
    pub fn validate(&self) -> Result<(), WorkerConfigError> {
        if self.concurrency == 0 {
            return Err(WorkerConfigError::Concurrency);
        }
        if self.batch_size == 0 {
            return Err(WorkerConfigError::BatchSize);
        }
        if self.max_batch_size < self.batch_size {
            return Err(WorkerConfigError::MaxBatchSize);
        }
        if self.lease_ms < Duration::from_millis(500) {
            return Err(WorkerConfigError::Lease);
        }
        if self.poll_interval_ms.is_zero() {
            return Err(WorkerConfigError::PollInterval);
        }
        if self.crash_loop_cap == 0 {
            return Err(WorkerConfigError::CrashLoopCap);
        }
        if !(1..=10_000).contains(&self.notify_batch) {
            return Err(WorkerConfigError::NotifyBatch);
        }
        if self.queues.iter().any(String::is_empty) {
            return Err(WorkerConfigError::EmptyQueueName);
        }
        Ok(())
    }

    /// The queues this worker serves, resolved.
    pub fn queue_names(&self) -> Vec<String> {
        if !self.queues.is_empty() {
            return self.queues.clone();
        }
        let mut all: Vec<String> = kiln_jobs::KINDS
            .iter()
            .map(|s| s.queue.to_owned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Claim loops run at once: enough to keep `concurrency` slots fed in
    /// batches of `batch_size`, at most 4 so idle workers do not crowd
    /// the database with empty claims.
    pub fn claimers(&self) -> u32 {
        self.concurrency.div_ceil(self.batch_size).clamp(1, 4)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.lease_ms / 3
    }
}

/// Durations in settings are whole milliseconds.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::{WorkerConfig, WorkerConfigError};

    #[test]
    fn claims_cannot_be_capped_below_their_base_batch() {
        let config = WorkerConfig {
            batch_size: 20,
            max_batch_size: 10,
            ..WorkerConfig::default()
        };
        assert_eq!(config.validate(), Err(WorkerConfigError::MaxBatchSize));
        assert!(
            WorkerConfigError::MaxBatchSize
                .to_string()
                .contains("worker.max_batch_size")
        );
        assert_eq!(WorkerConfig::default().validate(), Ok(()));
    }
}
