//! Each process remembers the sessions it has looked up, so a signed-in
//! request costs no database round trip when its token was seen lately.
//!
//! The database stays the authority: an entry lives at most `ttl` and never
//! past the session's own expiry, and a revocation removes it at once in the
//! process that revoked and, through the engine's change notifications, in
//! every other process. While an engine cannot promise to hear every other
//! process (the Postgres listener is reconnecting), nothing is remembered
//! and every lookup asks the database.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use kiln_jobs::UserId;
use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::StoreEvent;

/// Entries kept at most; beyond, the expired go, and if none had, all.
const MAX_ENTRIES: usize = 100_000;

pub(crate) struct SessionCache {
    ttl: Duration,
    state: Mutex<State>,
}

struct State {
    entries: HashMap<String, Entry>,
    /// The change notifications, read before every lookup so a revocation
    /// another process announced is applied before its token is trusted.
    events: broadcast::Receiver<StoreEvent>,
    /// Bumped by every removal: a lookup that raced a revocation does not
    /// put back what the revocation removed.
    removals: u64,
}

struct Entry {
    user: UserId,
    until: Instant,
}

/// What a lookup that missed must hand back to [`SessionCache::remember`].
pub(crate) struct Miss {
    /// `None`: the answer must not be remembered.
    removals: Option<u64>,
}

impl SessionCache {
    /// `ttl` zero: remember nothing.
    pub(crate) fn new(ttl: Duration, events: broadcast::Receiver<StoreEvent>) -> SessionCache {
        SessionCache {
            ttl,
            state: Mutex::new(State {
                entries: HashMap::new(),
                events,
                removals: 0,
            }),
        }
    }

    /// The user of a remembered live session, or a [`Miss`] to look it up
    /// with. `reliable`: the engine hears every process's revocations now.
    pub(crate) fn get(&self, token_hash: &str, reliable: bool) -> Result<UserId, Miss> {
        let mut state = self.lock();
        state.apply_events();
        if !reliable || self.ttl.is_zero() {
            state.clear();
            return Err(Miss { removals: None });
        }
        match state.entries.get(token_hash) {
            Some(e) if e.until > Instant::now() => return Ok(e.user),
            Some(_) => {
                state.entries.remove(token_hash);
            }
            None => {}
        }
        Err(Miss {
            removals: Some(state.removals),
        })
    }

    /// Remembers what the database answered after a [`Miss`], unless a
    /// removal happened meanwhile (it may have been this very session).
    pub(crate) fn remember(
        &self,
        miss: Miss,
        token_hash: &str,
        user: UserId,
        expires_at: DateTime<Utc>,
    ) {
        let Some(removals) = miss.removals else {
            return;
        };
        let left = (expires_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let keep = self.ttl.min(left);
        if keep.is_zero() {
            return;
        }
        let mut state = self.lock();
        state.apply_events();
        if state.removals != removals {
            return;
        }
        if state.entries.len() >= MAX_ENTRIES {
            let now = Instant::now();
            state.entries.retain(|_, e| e.until > now);
            if state.entries.len() >= MAX_ENTRIES {
                state.clear();
            }
        }
        state.entries.insert(
            token_hash.to_owned(),
            Entry {
                user,
                until: Instant::now() + keep,
            },
        );
    }

    /// Forgets one session (revoked in this process).
    pub(crate) fn forget(&self, token_hash: &str) {
        let mut state = self.lock();
        state.entries.remove(token_hash);
        state.removals += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-done that a
        // lookup could trust: every entry is whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn apply_events(&mut self) {
        loop {
            match self.events.try_recv() {
                Ok(StoreEvent::SessionRevoked(hash)) => {
                    self.entries.remove(&hash);
                    self.removals += 1;
                }
                // The listener reconnected and may have missed some.
                Ok(StoreEvent::JobsAvailable(None)) => self.clear(),
                Ok(_) => {}
                Err(TryRecvError::Lagged(_)) => self.clear(),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }

    fn clear(&mut self) {
        if !self.entries.is_empty() {
            self.entries.clear();
        }
        self.removals += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn cache(ttl: Duration) -> (SessionCache, broadcast::Sender<StoreEvent>) {
        let (tx, rx) = broadcast::channel(4);
        (SessionCache::new(ttl, rx), tx)
    }

    fn soon() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::hours(1)
    }

    #[test]
    fn a_remembered_session_is_answered_until_it_is_forgotten() {
        let (cache, _tx) = cache(Duration::from_secs(60));
        let user = UserId(Uuid::now_v7());
        let miss = cache.get("t", true).unwrap_err();
        cache.remember(miss, "t", user, soon());
        assert_eq!(cache.get("t", true).ok(), Some(user));
        cache.forget("t");
        assert!(cache.get("t", true).is_err());
    }

    #[test]
    fn a_revocation_heard_from_another_process_removes_the_entry() {
        let (cache, tx) = cache(Duration::from_secs(60));
        let user = UserId(Uuid::now_v7());
        let miss = cache.get("t", true).unwrap_err();
        cache.remember(miss, "t", user, soon());
        tx.send(StoreEvent::SessionRevoked("t".into())).unwrap();
        assert!(cache.get("t", true).is_err());
    }

    #[test]
    fn a_lookup_that_raced_a_revocation_is_not_remembered() {
        let (cache, _tx) = cache(Duration::from_secs(60));
        let miss = cache.get("t", true).unwrap_err();
        // The database answered "live", but the session was revoked before
        // the answer came back.
        cache.forget("t");
        cache.remember(miss, "t", UserId(Uuid::now_v7()), soon());
        assert!(cache.get("t", true).is_err());
    }

    #[test]
    fn nothing_is_trusted_while_revocations_may_be_missed() {
        let (cache, tx) = cache(Duration::from_secs(60));
        let user = UserId(Uuid::now_v7());
        let miss = cache.get("t", true).unwrap_err();
        cache.remember(miss, "t", user, soon());
        assert!(cache.get("t", false).is_err(), "listener down");
        let miss = cache.get("t", true).unwrap_err();
        cache.remember(miss, "t", user, soon());
        tx.send(StoreEvent::JobsAvailable(None)).unwrap();
        assert!(cache.get("t", true).is_err(), "listener reconnected");
        for _ in 0..8 {
            let _ = tx.send(StoreEvent::JobChanged(Uuid::now_v7()));
        }
        let miss = cache.get("t", true).unwrap_err();
        cache.remember(miss, "t", user, soon());
        for _ in 0..8 {
            let _ = tx.send(StoreEvent::JobChanged(Uuid::now_v7()));
        }
        assert!(cache.get("t", true).is_err(), "notifications lagged");
    }

    #[test]
    fn an_entry_ends_with_its_session_and_a_zero_ttl_keeps_none() {
        let (cache, _tx) = cache(Duration::from_secs(60));
        let user = UserId(Uuid::now_v7());
        let miss = cache.get("t", true).unwrap_err();
        cache.remember(miss, "t", user, Utc::now() - chrono::Duration::seconds(1));
        assert!(cache.get("t", true).is_err());

        let (off, _tx) = self::cache(Duration::ZERO);
        let miss = off.get("t", true).unwrap_err();
        off.remember(miss, "t", user, soon());
        assert!(off.get("t", true).is_err());
    }
}
