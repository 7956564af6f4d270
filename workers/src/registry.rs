use std::{collections::HashMap, marker::PhantomData, sync::Arc};

use async_trait::async_trait;
use kiln_jobs::{DecodeError, Job, JobError, Policy};
use kiln_store::ClaimedJob;

use crate::{JobContext, Outcome};

/// Runs jobs of kind `J`.
#[async_trait]
pub trait Handler<J: Job>: Send + Sync + 'static {
    async fn run(&self, job: J, ctx: &JobContext) -> Result<Outcome<J::Result>, JobError>;
}

/// A handler seen through the kind name: decodes the payload, runs, and
/// turns the typed result into the JSON stored with the job.
#[async_trait]
pub(crate) trait ErasedHandler: Send + Sync {
    async fn run(&self, job: &ClaimedJob, ctx: &JobContext) -> Result<Outcome, JobError>;
}

struct Typed<J, H> {
    handler: H,
    _job: PhantomData<fn() -> J>,
}

#[async_trait]
impl<J: Job, H: Handler<J>> ErasedHandler for Typed<J, H> {
    async fn run(&self, job: &ClaimedJob, ctx: &JobContext) -> Result<Outcome, JobError> {
        let payload: J = kiln_jobs::decode(job.schema_version, job.payload.clone())?;
        match self.handler.run(payload, ctx).await? {
            Outcome::Done(result) => serde_json::to_value(result)
                .map(Outcome::Done)
                .map_err(|e| JobError::permanent("unserializable_result", e.to_string())),
            Outcome::DoneThen(result, follow_ups) => serde_json::to_value(result)
                .map(|result| Outcome::DoneThen(result, follow_ups))
                .map_err(|e| JobError::permanent("unserializable_result", e.to_string())),
            Outcome::Snooze(delay) => Ok(Outcome::Snooze(delay)),
        }
    }
}

/// A registered kind: its handler and the policy its attempts run under.
#[derive(Clone)]
pub(crate) struct Registered {
    pub handler: Arc<dyn ErasedHandler>,
    pub policy: Policy,
}

/// Every handler this process runs, by kind, each with its kind's policy.
#[derive(Default, Clone)]
pub struct Registry {
    /// Shared: every job's run holds a clone of the registry.
    handlers: Arc<HashMap<&'static str, Registered>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn register<J: Job>(mut self, handler: impl Handler<J>) -> Registry {
        let previous = Arc::make_mut(&mut self.handlers).insert(
            J::KIND,
            Registered {
                handler: Arc::new(Typed {
                    handler,
                    _job: PhantomData,
                }),
                policy: Policy::of::<J>(),
            },
        );
        assert!(previous.is_none(), "two handlers for kind {}", J::KIND);
        self
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.handlers.keys().copied()
    }

    /// The policy a registered kind runs under; `None` when no handler
    /// here runs that kind.
    pub fn policy(&self, kind: &str) -> Option<Policy> {
        self.handlers.get(kind).map(|r| r.policy)
    }

    /// A kind's handler and policy. A kind without a handler is a permanent
    /// `unknown_kind` error: this process cannot run it on any attempt.
    pub(crate) fn get(&self, kind: &str) -> Result<&Registered, JobError> {
        self.handlers
            .get(kind)
            .ok_or_else(|| DecodeError::UnknownKind(kind.to_owned()).into())
    }
}
