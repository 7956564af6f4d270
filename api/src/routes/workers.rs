//! The worker registry for operators (operator role required; others 403
//! `forbidden`): every `kiln work` process with its heartbeat, queues and
//! running jobs, and whether it is alive, stalled or lost.

use axum::{Router, extract::State, routing::get};
use chrono::{DateTime, Utc};
use kiln_store::workers::{Worker, WorkerStatus};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{AppState, Json, Problem, auth::Operator};

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/v1/workers", get(list))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Heartbeats and claims as it should.
    Alive,
    /// Heartbeats and has free slots, but has claimed nothing for a while
    /// although jobs of its queues (not paused, not at their concurrency
    /// limit) have been due as long.
    Stalled,
    /// Shutting down: it claims nothing more while its running jobs finish
    /// (within `worker.shutdown_grace_ms`), then deregisters.
    Stopping,
    /// No heartbeat for longer than its lease: its jobs' leases have
    /// expired and any worker's maintenance rescues them. Listed for an
    /// hour, then removed.
    Lost,
}

impl From<WorkerStatus> for Status {
    fn from(s: WorkerStatus) -> Status {
        match s {
            WorkerStatus::Alive => Status::Alive,
            WorkerStatus::Stalled => Status::Stalled,
            WorkerStatus::Stopping => Status::Stopping,
            WorkerStatus::Lost => Status::Lost,
        }
    }
}

/// One worker process.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerResource {
    /// Also the `lease_owner` of the jobs it claims.
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// The kiln version it runs.
    pub version: String,
    pub queues: Vec<String>,
    /// Jobs it runs at once at most.
    pub concurrency: u32,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    /// Jobs it was running at its last heartbeat.
    pub jobs_running: u32,
    /// When it last claimed a job; null: never.
    pub last_claim_at: Option<DateTime<Utc>>,
    pub status: Status,
}

impl From<Worker> for WorkerResource {
    fn from(w: Worker) -> WorkerResource {
        let row = w.row;
        WorkerResource {
            id: row.worker.id.0,
            host: row.worker.host,
            pid: row.worker.pid,
            version: row.worker.version,
            queues: row.worker.queues,
            concurrency: row.worker.concurrency,
            started_at: row.worker.started_at,
            last_heartbeat_at: row.heartbeat_at,
            jobs_running: row.running,
            last_claim_at: row.last_claim_at,
            status: w.status.into(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    /// Oldest process first.
    pub workers: Vec<WorkerResource>,
}

#[utoipa::path(get, path = "/admin/v1/workers", tag = "operators",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "every registered worker process (lost ones for an hour): host, pid, version, queues, concurrency, started, last heartbeat, jobs running, last claim, and `alive`, `stalled`, `stopping` or `lost`", body = WorkerList),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
    ))]
async fn list(
    State(state): State<AppState>,
    Operator(_operator): Operator,
) -> Result<Json<WorkerList>, Problem> {
    let workers = state.store.workers(Utc::now()).await?;
    Ok(Json(WorkerList {
        workers: workers.into_iter().map(WorkerResource::from).collect(),
    }))
}
