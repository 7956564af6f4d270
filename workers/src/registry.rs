use std::{collections::HashMap, marker::PhantomData, sync::Arc};

use async_trait::async_trait;
use kiln_jobs::{DecodeError, Job, JobError};
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
            Outcome::Snooze(delay) => Ok(Outcome::Snooze(delay)),
        }
    }
}

/// Every handler this process runs, by kind.
#[derive(Default, Clone)]
pub struct Registry {
    handlers: HashMap<&'static str, Arc<dyn ErasedHandler>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn register<J: Job>(mut self, handler: impl Handler<J>) -> Registry {
        let previous = self.handlers.insert(
            J::KIND,
            Arc::new(Typed {
                handler,
                _job: PhantomData,
            }),
        );
        assert!(previous.is_none(), "two handlers for kind {}", J::KIND);
        self
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.handlers.keys().copied()
    }

    pub(crate) fn get(&self, kind: &str) -> Result<&Arc<dyn ErasedHandler>, JobError> {
        self.handlers
            .get(kind)
            .ok_or_else(|| DecodeError::UnknownKind(kind.to_owned()).into())
    }
}
