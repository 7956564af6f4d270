use std::{collections::BTreeSet, ops::Deref, sync::Arc, time::Duration};

use kiln_jobs::UserId;
use kiln_jobs::{GenerateImage, Job};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::{
    CancelOutcome, ClaimedJob, Completion, Enqueued, Failure, JobState, Lease, NewJob, Pii,
    Rescued, StoreError, StoreEvent,
    accounts::{
        CodeRecord, Contacts, Identifier, LoginRecord, NewCode, NewUser, Profile, StoredContacts,
        UserCreated,
    },
    generations::{BatchEnqueued, GenerationEnqueued, NewGeneration, NewGenerationBatch},
    group_commit::GroupCommit,
    metrics::metrics,
    operators::{JobFilter, LimitedQueues, QueueOverview},
    queue::{Database, Engine},
    schedules::SlotFired,
    sessions::SessionCache,
};

/// The one store every process holds, in front of its database engine
/// (PostgreSQL or SQLite). Engines are SQL and binding only; what both
/// share lives here once: the enqueue metrics and the change events that
/// wake workers and long-polling clients.
///
/// The writes that matter to subscribers are methods of `Store`; every
/// other operation ([`Queue`](crate::Queue), [`Accounts`](crate::accounts::Accounts),
/// [`Generations`](crate::generations::Generations)) is the engine's, reached
/// through `Deref`, so a new read is two SQL statements and nothing else.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    /// Seals and opens every address, and makes its blind index.
    pii: Arc<Pii>,
    events: broadcast::Sender<StoreEvent>,
    sessions: Arc<SessionCache>,
    group_commit: GroupCommit,
    /// Which queues have a concurrency limit, as the claim path last read.
    limited: Arc<LimitedQueues>,
}

impl Deref for Store {
    type Target = dyn Database;

    fn deref(&self) -> &dyn Database {
        &*self.engine
    }
}

impl Store {
    /// Puts an engine behind a store. `events` is the channel the engine's
    /// own notifications (if it has any) are sent on; sessions are
    /// remembered for `session_ttl` at most (zero: not at all).
    pub(crate) fn new(
        engine: Arc<dyn Engine>,
        events: broadcast::Sender<StoreEvent>,
        session_ttl: Duration,
        pii: Arc<Pii>,
    ) -> Store {
        let sessions = Arc::new(SessionCache::new(session_ttl, events.subscribe()));
        let group_commit = GroupCommit::start(engine.clone());
        Store {
            engine,
            pii,
            events,
            sessions,
            group_commit,
            limited: Arc::default(),
        }
    }

    /// A channel for engines to send their notifications on.
    pub(crate) fn channel() -> broadcast::Sender<StoreEvent> {
        broadcast::channel(1024).0
    }

    /// Wake-ups: jobs available, cancellations asked for, jobs changed.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// Whether every other process's notifications reach this one now
    /// (false while the Postgres listener reconnects).
    pub fn hears_every_process(&self) -> bool {
        self.engine.hears_every_process()
    }

    /// Wakes this process's idle workers for `queue` after a job was
    /// enqueued inside a caller's own transaction (an engine's
    /// `enqueue_in`), once that transaction committed.
    pub fn jobs_available(&self, queue: &str) {
        self.tell([StoreEvent::JobsAvailable(Some(queue.to_owned()))]);
    }

    /// Tells this process's subscribers, where the database does not tell
    /// every process itself.
    fn tell(&self, events: impl IntoIterator<Item = StoreEvent>) {
        let events: Vec<StoreEvent> = events.into_iter().collect();
        if events.is_empty() || self.engine.announce(&events) {
            return;
        }
        for event in events {
            let _ = self.events.send(event);
        }
    }

    fn changed(&self, ids: impl IntoIterator<Item = Uuid>) {
        self.tell(ids.into_iter().map(StoreEvent::JobChanged));
    }

    /// Changes of the jobs clients may be waiting on (those with an owner).
    fn leases_changed<'a>(&self, leases: impl IntoIterator<Item = &'a Lease>) {
        self.changed(leases.into_iter().filter(|l| l.owned).map(|l| l.id));
    }

    /// The user a bearer token's hash signs in, if its session is live. A
    /// session this process looked up lately is answered from memory (see
    /// `sessions.rs` for why that cannot outlive a revocation).
    pub async fn session_user(&self, token_hash: &str) -> Result<Option<UserId>, StoreError> {
        let miss = match self
            .sessions
            .get(token_hash, self.engine.hears_every_process())
        {
            Ok(user) => return Ok(Some(user)),
            Err(miss) => miss,
        };
        let Some(session) = self.engine.find_session(token_hash).await? else {
            return Ok(None);
        };
        self.sessions
            .remember(miss, token_hash, session.user_id, session.expires_at);
        Ok(Some(session.user_id))
    }

    /// Revokes a session; no process trusts its token afterwards. False if
    /// it was not live.
    pub async fn revoke_session(&self, token_hash: &str) -> Result<bool, StoreError> {
        let revoked = self.engine.revoke_session_row(token_hash).await?;
        // The engine told the other processes; this one forgets now, not
        // when its own notification comes back.
        self.sessions.forget(token_hash);
        Ok(revoked)
    }

    /// Inserts a job, or returns the existing one with the same owner, kind
    /// and idempotency key.
    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued, StoreError> {
        let (kind, queue) = (job.kind.clone(), job.queue.clone());
        let enqueued = self.engine.enqueue(job).await?;
        if enqueued.created {
            metrics().jobs_enqueued.with_label_values(&[&kind]).inc();
            self.tell([StoreEvent::JobsAvailable(Some(queue))]);
        }
        Ok(enqueued)
    }

    /// Enqueues a cron plan's job for `slot`, once across every replica
    /// and never beside an unfinished run of the same plan (see
    /// `schedules.rs`); counts fires and skips per plan.
    pub async fn fire_slot(
        &self,
        plan: &str,
        slot: chrono::DateTime<chrono::Utc>,
        job: NewJob,
    ) -> Result<SlotFired, StoreError> {
        let (kind, queue) = (job.kind.clone(), job.queue.clone());
        let fired = self.engine.fire_slot(plan, slot, job).await?;
        match fired {
            SlotFired::Fired(_) => {
                metrics().jobs_enqueued.with_label_values(&[&kind]).inc();
                metrics().cron_fires.with_label_values(&[plan]).inc();
                self.tell([StoreEvent::JobsAvailable(Some(queue))]);
            }
            SlotFired::StillRunning(_) => metrics().cron_skips.with_label_values(&[plan]).inc(),
            SlotFired::AlreadyHandled => {}
        }
        Ok(fired)
    }

    /// Publishes a policy version and queues its `notify_users` fan-out,
    /// in one transaction; None when the version exists already.
    pub async fn publish_policy(
        &self,
        version: &crate::notices::PolicyVersion,
    ) -> Result<Option<Uuid>, StoreError> {
        let fan_out = fan_out_job(kiln_jobs::Broadcast::Policy {
            version: version.version.clone(),
        })?;
        let queue = fan_out.queue.clone();
        let job = self.engine.publish_policy(version, fan_out).await?;
        if job.is_some() {
            metrics()
                .jobs_enqueued
                .with_label_values(&[kiln_jobs::NotifyUsers::KIND])
                .inc();
            self.tell([StoreEvent::JobsAvailable(Some(queue))]);
        }
        Ok(job)
    }

    /// Records a security notice to `audience` (empty: every verified
    /// account) and queues its fan-out, in one transaction; its job's id.
    pub async fn record_security_notice(
        &self,
        notice: &crate::notices::SecurityNotice,
        audience: &[UserId],
    ) -> Result<Uuid, StoreError> {
        let fan_out = fan_out_job(kiln_jobs::Broadcast::Security {
            notice_id: notice.id,
        })?;
        let queue = fan_out.queue.clone();
        let job = self
            .engine
            .record_security_notice(notice, audience, fan_out)
            .await?;
        metrics()
            .jobs_enqueued
            .with_label_values(&[kiln_jobs::NotifyUsers::KIND])
            .inc();
        self.tell([StoreEvent::JobsAvailable(Some(queue))]);
        Ok(job)
    }

    /// Queues one batch of a broadcast's notices (see
    /// [`Notices::fan_out`](crate::notices::Notices::fan_out)) and wakes
    /// the workers that send them.
    pub async fn fan_out(
        &self,
        broadcast: &kiln_jobs::Broadcast,
        limit: u32,
    ) -> Result<Option<crate::notices::FanOutBatch>, StoreError> {
        let batch = self.engine.fan_out(broadcast, limit).await?;
        if let Some(b) = batch.filter(|b| b.queued() > 0) {
            let m = &metrics().jobs_enqueued;
            m.with_label_values(&[kiln_jobs::SendEmail::KIND])
                .inc_by(b.emails);
            m.with_label_values(&[kiln_jobs::SendSms::KIND])
                .inc_by(b.sms);
            self.tell([StoreEvent::JobsAvailable(Some(
                kiln_jobs::SendEmail::QUEUE.to_owned(),
            ))]);
        }
        Ok(batch)
    }

    /// Deletes an account at its owner's request (see `deletion.rs`): it
    /// is hidden, its address freed, every session revoked in every
    /// process, and its `account_purge` enqueued, in one transaction. None
    /// when there is no such live account.
    pub async fn delete_account(&self, user: UserId) -> Result<Option<Uuid>, StoreError> {
        let purge = NewJob::of(&kiln_jobs::AccountPurge { user })
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .idempotency_key(format!("account_purge:{user}"));
        let queue = purge.queue.clone();
        let Some(deleted) = self.engine.delete_account(user, purge).await? else {
            return Ok(None);
        };
        for token_hash in &deleted.revoked {
            self.sessions.forget(token_hash);
        }
        metrics()
            .jobs_enqueued
            .with_label_values(&[kiln_jobs::AccountPurge::KIND])
            .inc();
        self.tell([StoreEvent::JobsAvailable(Some(queue))]);
        Ok(Some(deleted.purge_job))
    }

    /// Cancels every unfinished job of an owner but those of the `sparing`
    /// kinds: waiting ones at once (refunded by the move that ends them),
    /// running ones by telling their workers. Returns (cancelled now,
    /// still running).
    pub async fn cancel_jobs_of(
        &self,
        owner: UserId,
        sparing: &[&str],
    ) -> Result<(u64, u64), StoreError> {
        let mut seen = std::collections::HashSet::new();
        let (mut cancelled, mut running) = (0, 0);
        loop {
            let jobs = self.engine.unfinished_jobs_of(owner, 500).await?;
            let fresh: Vec<Uuid> = jobs
                .into_iter()
                .filter(|(id, kind)| seen.insert(*id) && !sparing.contains(&kind.as_str()))
                .map(|(id, _)| id)
                .collect();
            if fresh.is_empty() {
                return Ok((cancelled, running));
            }
            for id in fresh {
                match self.cancel(id, Some(owner)).await? {
                    CancelOutcome::Cancelled => cancelled += 1,
                    CancelOutcome::Cancelling => running += 1,
                    CancelOutcome::AlreadyFinished(_) | CancelOutcome::NotFound => {}
                }
            }
        }
    }

    /// Inserts many jobs at once; returns the ids of those inserted (a job
    /// whose idempotency key exists already is skipped).
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Uuid>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<(String, String)> = jobs
            .iter()
            .map(|j| (j.kind.clone(), j.queue.clone()))
            .collect();
        let inserted = self.engine.enqueue_many(jobs).await?;
        let mut queues = BTreeSet::new();
        for (i, _) in &inserted {
            let (kind, queue) = &names[*i];
            metrics().jobs_enqueued.with_label_values(&[kind]).inc();
            queues.insert(queue.clone());
        }
        self.tell(
            queues
                .into_iter()
                .map(|q| StoreEvent::JobsAvailable(Some(q))),
        );
        Ok(inserted.into_iter().map(|(_, id)| id).collect())
    }

    /// Claims up to `limit` due jobs from `queues` for `worker`; see
    /// [`JobWrites::claim`](crate::JobWrites::claim).
    pub async fn claim(
        &self,
        worker: &str,
        queues: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        if queues.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        // Limited queues first: the plain claim would otherwise take every
        // free slot under a backlog elsewhere, and it skips them anyway.
        let limited = self.limited.among(queues, &*self.engine).await?;
        let mut claimed = if limited.is_empty() {
            Vec::new()
        } else {
            self.engine
                .claim_capped(worker, &limited, limit, lease)
                .await?
        };
        let rest = limit.saturating_sub(claimed.len() as u32);
        if rest > 0 {
            claimed.extend(self.engine.claim(worker, queues, rest, lease).await?);
        }
        self.leases_changed(claimed.iter().map(|j| &j.lease));
        Ok(claimed)
    }

    /// Records successes; returns how many were still ours.
    pub async fn complete(&self, done: &[Completion]) -> Result<u64, StoreError> {
        if done.is_empty() {
            return Ok(0);
        }
        let n = self.engine.complete(done).await?;
        self.leases_changed(done.iter().map(|c| &c.lease));
        Ok(n)
    }

    /// Records one success and enqueues its follow-ups (children of the
    /// job, for its owner) in the same transaction. `None`: the lease was
    /// stale, nothing was written.
    pub async fn complete_then(
        &self,
        done: &Completion,
        follow_ups: Vec<NewJob>,
    ) -> Result<Option<Vec<Uuid>>, StoreError> {
        let queues: BTreeSet<String> = follow_ups.iter().map(|j| j.queue.clone()).collect();
        let kinds: Vec<String> = follow_ups.iter().map(|j| j.kind.clone()).collect();
        let children = self.engine.complete_then(done, follow_ups).await?;
        self.leases_changed(std::iter::once(&done.lease));
        if children.as_ref().is_some_and(|c| !c.is_empty()) {
            for kind in &kinds {
                metrics().jobs_enqueued.with_label_values(&[kind]).inc();
            }
            self.tell(
                queues
                    .into_iter()
                    .map(|q| StoreEvent::JobsAvailable(Some(q))),
            );
        }
        Ok(children)
    }

    /// Cancels the unfinished follow-ups of `parent` (those of `owner`):
    /// how many were cancelled or told to stop.
    pub async fn cancel_children(
        &self,
        parent: Uuid,
        owner: Option<UserId>,
    ) -> Result<u64, StoreError> {
        let mut stopped = 0;
        for child in self.engine.children_of(&[parent]).await? {
            if child.state.is_final() {
                continue;
            }
            if matches!(
                self.cancel(child.id, owner).await?,
                CancelOutcome::Cancelled | CancelOutcome::Cancelling
            ) {
                stopped += 1;
            }
        }
        Ok(stopped)
    }

    /// Records a failed attempt: retry later, or fail for good.
    pub async fn fail(&self, lease: Lease, failure: Failure) -> Result<bool, StoreError> {
        let ours = self.engine.fail(lease, failure).await?;
        self.leases_changed(ours.then_some(&lease));
        Ok(ours)
    }

    /// Puts a running job back to wait `delay` without spending its attempt.
    pub async fn snooze(&self, lease: Lease, delay: Duration) -> Result<bool, StoreError> {
        let ours = self.engine.snooze(lease, delay).await?;
        self.leases_changed(ours.then_some(&lease));
        Ok(ours)
    }

    /// Hands jobs back unfinished (graceful shutdown): available again at
    /// once, the attempt not spent.
    pub async fn release(&self, leases: &[Lease]) -> Result<u64, StoreError> {
        if leases.is_empty() {
            return Ok(0);
        }
        let n = self.engine.release(leases).await?;
        if n > 0 {
            self.leases_changed(leases);
            self.tell([StoreEvent::JobsAvailable(None)]);
        }
        Ok(n)
    }

    /// Ends a running job whose cancellation was asked for.
    pub async fn finish_cancelled(&self, lease: Lease, reason: &str) -> Result<bool, StoreError> {
        let ours = self.engine.finish_cancelled(lease, reason).await?;
        self.leases_changed(ours.then_some(&lease));
        Ok(ours)
    }

    /// Stage and progress (0-100) of a running job, as its handler reports them.
    pub async fn set_progress(
        &self,
        lease: Lease,
        stage: Option<&str>,
        progress: u8,
    ) -> Result<bool, StoreError> {
        let ours = self.engine.set_progress(lease, stage, progress).await?;
        self.leases_changed(ours.then_some(&lease));
        Ok(ours)
    }

    /// Cancels a job: at once when waiting, by telling its worker when
    /// running. `owner` restricts it to that owner's jobs.
    pub async fn cancel(
        &self,
        id: Uuid,
        owner: Option<UserId>,
    ) -> Result<CancelOutcome, StoreError> {
        let outcome = self.engine.cancel(id, owner).await?;
        match outcome {
            CancelOutcome::Cancelled => self.changed([id]),
            CancelOutcome::Cancelling => {
                self.tell([StoreEvent::JobChanged(id), StoreEvent::CancelRequested(id)])
            }
            CancelOutcome::AlreadyFinished(_) | CancelOutcome::NotFound => {}
        }
        Ok(outcome)
    }

    /// Claims from this queue again; its idle workers look at once.
    pub async fn resume_queue(&self, queue: &str) -> Result<(), StoreError> {
        self.engine.resume_queue(queue).await?;
        self.tell([StoreEvent::JobsAvailable(Some(queue.to_owned()))]);
        Ok(())
    }

    /// Takes back running jobs whose lease expired: retryable after backoff,
    /// or failed when out of attempts or past `crash_cap` rescues.
    pub async fn rescue_expired(&self, crash_cap: u32) -> Result<Vec<Rescued>, StoreError> {
        let rescued = self.engine.rescue_expired(crash_cap).await?;
        self.changed(rescued.iter().map(|r| r.id));
        Ok(rescued)
    }

    /// Stores a generation request with its `generate_image` job in one
    /// transaction, shared with the generations other requests ask for at
    /// the same moment (see `group_commit.rs`).
    pub async fn create_generation(
        &self,
        g: NewGeneration,
    ) -> Result<GenerationEnqueued, StoreError> {
        let enqueued = self.group_commit.create_generation(g).await?;
        if let GenerationEnqueued::Created { .. } = enqueued {
            metrics()
                .jobs_enqueued
                .with_label_values(&[GenerateImage::KIND])
                .inc();
            self.tell([StoreEvent::JobsAvailable(Some(
                GenerateImage::QUEUE.to_owned(),
            ))]);
        }
        Ok(enqueued)
    }

    /// Stores a batch of generations with all their jobs in one
    /// transaction, under one idempotency key.
    pub async fn create_generation_batch(
        &self,
        b: NewGenerationBatch,
    ) -> Result<BatchEnqueued, StoreError> {
        let enqueued = self.engine.create_generation_batch(b).await?;
        if let BatchEnqueued::Created { job_ids } = &enqueued {
            metrics()
                .jobs_enqueued
                .with_label_values(&[GenerateImage::KIND])
                .inc_by(job_ids.len() as u64);
            self.tell([StoreEvent::JobsAvailable(Some(
                GenerateImage::QUEUE.to_owned(),
            ))]);
        }
        Ok(enqueued)
    }
}

/// Accounts with their addresses in the clear: sealed on the way in, blind
/// for lookups, opened on the way out. Nothing else in kiln sees a sealed
/// value or an index.
impl Store {
    /// Applies pending migrations, then checks that this process's
    /// personal-data keys are the database's (the first to migrate records
    /// them).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.engine.migrate().await?;
        self.check_pii_keys().await
    }

    /// The keys this store seals under (another store on the same database
    /// needs the same).
    pub fn pii(&self) -> Arc<Pii> {
        self.pii.clone()
    }

    pub async fn count_accounts(&self) -> Result<u64, StoreError> {
        self.engine.account_count().await
    }

    pub async fn create_user(&self, user: NewUser) -> Result<UserCreated, StoreError> {
        let sealed = self.pii.seal(user.identifier.as_str());
        let blind = self.pii.blind(&user.identifier);
        self.engine
            .create_user_sealed(
                NewUser {
                    identifier: blind,
                    ..user
                },
                sealed,
            )
            .await
    }

    pub async fn login_record(&self, id: &Identifier) -> Result<Option<LoginRecord>, StoreError> {
        self.engine.login_record_blind(&self.pii.blind(id)).await
    }

    /// Where to reach a user who is not deleted; `None` otherwise.
    pub async fn contacts(&self, user_id: UserId) -> Result<Option<Contacts>, StoreError> {
        let Some(sealed) = self.engine.sealed_contacts(user_id).await? else {
            return Ok(None);
        };
        Ok(Some(Contacts {
            email: self.open_some(sealed.email)?,
            phone: self.open_some(sealed.phone)?,
            locale: sealed.locale,
        }))
    }

    /// Keeps `secret` as the account's webhook signing secret, sealed;
    /// false when the account is deleted.
    pub async fn set_webhook_secret(&self, user: UserId, secret: &str) -> Result<bool, StoreError> {
        self.engine
            .set_webhook_secret_sealed(user, &self.pii.seal(secret))
            .await
    }

    /// The account's webhook signing secret, opened; None when it has none.
    pub async fn webhook_secret(&self, user: UserId) -> Result<Option<String>, StoreError> {
        let sealed = self.engine.webhook_secret_sealed(user).await?;
        self.open_some(sealed)
    }

    /// The account as its owner sees it; `None` once deleted.
    pub async fn profile(&self, user_id: UserId) -> Result<Option<Profile>, StoreError> {
        let Some(p) = self.engine.sealed_profile(user_id).await? else {
            return Ok(None);
        };
        Ok(Some(Profile {
            email: self.open_some(p.email.clone())?,
            phone: self.open_some(p.phone.clone())?,
            ..p
        }))
    }

    /// Keeps a new verification code for its user, in place of any earlier
    /// one; a code that confirms a new address keeps the address sealed.
    pub async fn issue_code(&self, code: NewCode) -> Result<(), StoreError> {
        let sealed = code.contact.as_ref().map(|c| self.pii.seal(c.as_str()));
        let blind = code.contact.as_ref().map(|c| self.pii.blind(c));
        self.engine
            .issue_code_sealed(
                NewCode {
                    contact: blind,
                    ..code
                },
                sealed,
            )
            .await
    }

    /// The user's stored codes, newest first.
    pub async fn codes(&self, user_id: UserId) -> Result<Vec<CodeRecord>, StoreError> {
        self.engine
            .sealed_codes(user_id)
            .await?
            .into_iter()
            .map(|c| {
                let contact = match c.contact.clone() {
                    Some(Identifier::Email(s)) => Some(Identifier::Email(self.pii.open(&s)?)),
                    Some(Identifier::Phone(s)) => Some(Identifier::Phone(self.pii.open(&s)?)),
                    None => None,
                };
                Ok(CodeRecord { contact, ..c })
            })
            .collect()
    }

    /// Grants (`true`) or revokes the operator role of the account with
    /// this address; `None` when there is none (or it is deleted).
    pub async fn set_operator(
        &self,
        id: &Identifier,
        operator: bool,
    ) -> Result<Option<UserId>, StoreError> {
        self.engine
            .set_operator_blind(&self.pii.blind(id), operator)
            .await
    }

    /// Reseals, in batches of `batch`, every account whose addresses are
    /// not under the current key (with `all`), or only those from before
    /// sealing (without): after a key rotation, and as a process starts.
    /// `progress(done, examined)` is told after each batch. Answers how
    /// many accounts were resealed.
    pub async fn reseal_accounts(
        &self,
        all: bool,
        batch: u32,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, StoreError> {
        let (mut after, mut done, mut examined) = (None, 0u64, 0u64);
        loop {
            let rows = self.engine.stored_contacts(after, batch, !all).await?;
            let Some(last) = rows.last() else {
                return Ok(done);
            };
            after = Some(last.user_id);
            examined += rows.len() as u64;
            for row in rows {
                if let Some(resealed) = self.resealed(&row, all)? {
                    self.engine.reseal_contacts(&resealed).await?;
                    done += 1;
                }
            }
            progress(done, examined);
        }
    }

    /// The row under the current key, or `None` when it needs nothing.
    fn resealed(
        &self,
        row: &StoredContacts,
        all: bool,
    ) -> Result<Option<StoredContacts>, StoreError> {
        let legacy = row.email_sealed.is_none() && row.phone_sealed.is_none();
        let stale = [&row.email_sealed, &row.phone_sealed]
            .into_iter()
            .flatten()
            .any(|s| !self.pii.is_current(s));
        if !(legacy || (all && stale)) {
            return Ok(None);
        }
        // Before sealing, the index columns held the plain addresses.
        let (email, phone) = if legacy {
            (row.email_index.clone(), row.phone_index.clone())
        } else {
            (
                self.open_some(row.email_sealed.clone())?,
                self.open_some(row.phone_sealed.clone())?,
            )
        };
        let index = |id: Identifier| self.pii.blind(&id).as_str().to_owned();
        Ok(Some(StoredContacts {
            user_id: row.user_id,
            email_index: email.clone().map(|e| index(Identifier::Email(e))),
            phone_index: phone.clone().map(|p| index(Identifier::Phone(p))),
            email_sealed: email.map(|e| self.pii.seal(&e)),
            phone_sealed: phone.map(|p| self.pii.seal(&p)),
        }))
    }

    /// Refuses keys other than the ones this database's data is sealed
    /// under (the first process to start records its index key's digest).
    pub async fn check_pii_keys(&self) -> Result<(), StoreError> {
        let ours = self.pii.fingerprint();
        let theirs = self.engine.pii_fingerprint(&ours).await?;
        if theirs != ours {
            return Err(StoreError::KeysMismatch(format!(
                "this database's personal data was sealed under another index key \
                 (digest {theirs}, this process has {ours}): give every process the same \
                 encryption keys"
            )));
        }
        Ok(())
    }

    fn open_some(&self, sealed: Option<String>) -> Result<Option<String>, StoreError> {
        sealed.map(|s| self.pii.open(&s)).transpose()
    }
}

/// A broadcast's one fan-out job: its idempotency key makes a second
/// publication of the same notice find the first's job.
fn fan_out_job(broadcast: kiln_jobs::Broadcast) -> Result<NewJob, StoreError> {
    let key = format!("notify_users:{}", broadcast.key());
    Ok(NewJob::of(&kiln_jobs::NotifyUsers { broadcast })
        .map_err(|e| StoreError::Corrupt(e.to_string()))?
        .idempotency_key(key))
}

/// What operators see and do (see `operators.rs`).
impl Store {
    /// Every queue with its counts, settings and recent throughput.
    pub async fn queue_overview(&self) -> Result<Vec<QueueOverview>, StoreError> {
        let now = chrono::Utc::now();
        let settings = self.engine.queue_settings().await?;
        let live = self.engine.live_counts(now).await?;
        let failed = self.engine.failed_counts().await?;
        let finished = self.engine.finished_counts(now).await?;
        Ok(crate::operators::overview(
            now, settings, live, failed, finished,
        ))
    }

    /// Every queue's depth by unfinished state and dead jobs, and its
    /// oldest due job's age, for the gauges: the backlog (`jobs`) and the
    /// dead jobs' partial index only, never the finished history.
    pub async fn queue_depths(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        live: Vec<crate::operators::LiveCount>,
    ) -> Result<Vec<QueueOverview>, StoreError> {
        let failed = self.engine.failed_counts().await?;
        Ok(crate::operators::overview(
            now,
            Vec::new(),
            live,
            failed,
            Vec::new(),
        ))
    }

    /// Every registered worker process with its status at `now` (see
    /// `workers.rs`); `live` is the backlog as [`Operators::live_counts`]
    /// read it at `now`.
    ///
    /// [`Operators::live_counts`]: crate::operators::Operators::live_counts
    pub async fn workers_given(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        live: &[crate::operators::LiveCount],
    ) -> Result<Vec<crate::workers::Worker>, StoreError> {
        let rows = self.engine.worker_rows().await?;
        let settings = self.engine.queue_settings().await?;
        Ok(crate::workers::classify(now, rows, live, &settings))
    }

    /// [`Store::workers_given`], reading the backlog itself.
    pub async fn workers(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<crate::workers::Worker>, StoreError> {
        let live = self.engine.live_counts(now).await?;
        self.workers_given(now, &live).await
    }

    /// Sets (None: clears) a queue's concurrency limit; every claim path
    /// obeys it within a second, this process's at once.
    pub async fn set_concurrency_limit(
        &self,
        queue: &str,
        limit: Option<u32>,
    ) -> Result<(), StoreError> {
        self.engine.set_concurrency_limit(queue, limit).await?;
        self.limited.forget();
        // A cleared or raised limit may leave free slots for waiting jobs.
        self.tell([StoreEvent::JobsAvailable(Some(queue.to_owned()))]);
        Ok(())
    }

    /// Retries what `filter` matches, [`BATCH`](crate::operators::BATCH)
    /// jobs per statement, each its own transaction: failed and cancelled
    /// jobs that ended before this call run again, waiting ones become due
    /// now. Returns how many.
    pub async fn retry_jobs(&self, filter: &JobFilter) -> Result<u64, StoreError> {
        let started = chrono::Utc::now();
        let mut total = 0;
        loop {
            let batch = self
                .engine
                .retry_batch(filter, started, crate::operators::BATCH)
                .await?;
            if batch.is_empty() {
                return Ok(total);
            }
            total += batch.len() as u64;
            let queues: BTreeSet<String> = batch.iter().map(|t| t.queue.clone()).collect();
            self.changed(batch.iter().filter(|t| t.owned).map(|t| t.id));
            self.tell(
                queues
                    .into_iter()
                    .map(|q| StoreEvent::JobsAvailable(Some(q))),
            );
        }
    }

    /// Discards the waiting jobs `filter` matches, in batches: each ends
    /// `failed` with a `discarded` error (dead, kept for a later retry),
    /// its credits refunded. Running jobs are left alone (cancel them).
    pub async fn discard_jobs(&self, filter: &JobFilter) -> Result<u64, StoreError> {
        self.end_waiting(filter, JobState::Failed, "discarded by an operator")
            .await
    }

    /// Cancels what `filter` matches, in batches, as an owner's cancel
    /// does: waiting jobs end `cancelled` at once (credits refunded),
    /// running ones are told to stop. Returns (cancelled now, cancelling).
    pub async fn cancel_jobs(&self, filter: &JobFilter) -> Result<(u64, u64), StoreError> {
        let cancelled = self
            .end_waiting(filter, JobState::Cancelled, "cancelled by an operator")
            .await?;
        let mut cancelling = 0;
        loop {
            let batch = self
                .engine
                .request_cancel_batch(filter, crate::operators::BATCH)
                .await?;
            if batch.is_empty() {
                return Ok((cancelled, cancelling));
            }
            cancelling += batch.len() as u64;
            self.tell(batch.iter().flat_map(|t| {
                [
                    StoreEvent::JobChanged(t.id),
                    StoreEvent::CancelRequested(t.id),
                ]
            }));
        }
    }

    async fn end_waiting(
        &self,
        filter: &JobFilter,
        state: JobState,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let batch = self
                .engine
                .end_waiting_batch(filter, state, reason, crate::operators::BATCH)
                .await?;
            if batch.is_empty() {
                return Ok(total);
            }
            total += batch.len() as u64;
            self.changed(batch.iter().filter(|t| t.owned).map(|t| t.id));
        }
    }
}
