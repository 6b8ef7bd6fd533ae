//! Long-poll wake-ups for store changefeeds.
//!
//! A [`ChangeFeed`] is the in-process doorbell: storage rings it for a store after a transaction
//! that added changes for that store has committed, and every long-poll waiting on that store
//! re-reads the database. On PostgreSQL, [`PgChangeListener`] also rings it for changes committed
//! by other hub processes (LISTEN/NOTIFY), so several hubs on one database wake each other.
//!
//! The doorbell carries no data: the database stays the only source of truth, so a lost or
//! spurious ring costs at most one extra query, never a missed or duplicated change.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aisle_protocol::StoreId;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The PostgreSQL notification channel on which committed changes are announced (payload: store id).
pub const NOTIFY_CHANNEL: &str = "aisle_changes";

/// Per-store doorbells for long-polls.
#[derive(Debug, Default)]
pub struct ChangeFeed {
    // A `watch` per store that currently has listeners: a receiver that subscribed before the
    // database read sees every ring after it, so no wake-up can fall between read and wait.
    stores: Mutex<HashMap<StoreId, watch::Sender<u64>>>,
}

/// A long-poll's subscription to one store's doorbell.
#[derive(Debug)]
pub struct ChangeSubscription {
    rx: watch::Receiver<u64>,
}

impl ChangeSubscription {
    /// Forgets rings seen so far; call right before reading the database.
    pub fn mark_seen(&mut self) {
        self.rx.mark_unchanged();
    }

    /// Resolves at the first ring after the last [`mark_seen`](Self::mark_seen).
    pub async fn rung(&mut self) {
        // An error means the doorbell is gone; the caller re-reads, which is always safe.
        let _ = self.rx.changed().await;
    }
}

impl ChangeFeed {
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to the doorbell of `store`.
    pub fn subscribe(&self, store: &StoreId) -> ChangeSubscription {
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = stores
            .entry(store.clone())
            .or_insert_with(|| watch::channel(0).0);
        ChangeSubscription { rx: tx.subscribe() }
    }

    /// Rings the doorbell of `store` (after its changes have committed).
    pub fn wake(&self, store: &StoreId) {
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = stores.get(store) {
            if tx.receiver_count() == 0 {
                // Nobody waits on this store any more: drop the entry so the map stays small.
                stores.remove(store);
            } else {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Rings every doorbell: used when notifications may have been lost (listener reconnect).
    pub fn wake_all(&self) {
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        stores.retain(|_, tx| tx.receiver_count() > 0);
        for tx in stores.values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Number of stores with at least one waiting subscriber (for tests and metrics).
    pub fn stores_waited_on(&self) -> usize {
        let stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        stores.values().filter(|tx| tx.receiver_count() > 0).count()
    }
}

/// A dedicated PostgreSQL connection that LISTENs on [`NOTIFY_CHANNEL`] and rings the local
/// [`ChangeFeed`] for every notification. Reconnects with capped backoff; stops when dropped.
#[derive(Debug)]
pub struct PgChangeListener {
    task: JoinHandle<()>,
}

impl PgChangeListener {
    /// Starts listening in a background task on the current tokio runtime and returns once the
    /// first LISTEN is in place, so no notification after this call can be missed.
    pub async fn start(
        config: tokio_postgres::Config,
        feed: Arc<ChangeFeed>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(listen_forever(config, feed, ready_tx));
        let listener = PgChangeListener { task };
        match tokio::time::timeout(timeout, ready_rx).await {
            Ok(Ok(())) => Ok(listener),
            // The task logs why each attempt failed; dropping the listener stops it.
            _ => Err(format!(
                "could not LISTEN on {NOTIFY_CHANNEL} within {timeout:?}"
            )),
        }
    }
}

impl Drop for PgChangeListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen_forever(
    config: tokio_postgres::Config,
    feed: Arc<ChangeFeed>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&config, &feed, &mut ready).await {
            Ok(()) => {
                tracing::warn!("changefeed listener connection closed; reconnecting");
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!(error = %e, "changefeed listener failed; retrying in {backoff:?}");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life: LISTEN, then poll the connection for notifications until it ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    feed: &ChangeFeed,
    ready: &mut Option<oneshot::Sender<()>>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    // The connection must be polled for the LISTEN to complete and for notifications to arrive,
    // so drive it here while the LISTEN request runs.
    let sql = format!("LISTEN {NOTIFY_CHANNEL}");
    let listen = client.batch_execute(&sql);
    tokio::pin!(listen);
    loop {
        tokio::select! {
            r = &mut listen => { r?; break; }
            m = std::future::poll_fn(|cx| connection.poll_message(cx)) => match m {
                Some(Ok(msg)) => deliver(feed, msg),
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
    match ready.take() {
        // First LISTEN: the storage is only now handed out, so nobody can have missed anything.
        Some(tx) => {
            let _ = tx.send(());
        }
        // A reconnect: what committed while we were not listening was not announced to us.
        None => feed.wake_all(),
    }
    tracing::debug!("changefeed listener is listening");
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(msg)) => deliver(feed, msg),
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}

fn deliver(feed: &ChangeFeed, msg: tokio_postgres::AsyncMessage) {
    match msg {
        tokio_postgres::AsyncMessage::Notification(n) => match StoreId::parse(n.payload()) {
            Ok(store) => feed.wake(&store),
            // Someone else's NOTIFY on our channel: re-check everyone rather than guess.
            Err(_) => feed.wake_all(),
        },
        tokio_postgres::AsyncMessage::Notice(n) => {
            tracing::debug!(notice = %n.message(), "postgres notice on listener");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_ring_after_subscribing_is_never_lost() {
        let feed = ChangeFeed::new();
        let s1 = StoreId::parse("S001").unwrap();
        let s2 = StoreId::parse("S002").unwrap();
        let mut sub = feed.subscribe(&s1);
        sub.mark_seen();
        // Rung between "read the database" and "wait": must still wake the waiter.
        feed.wake(&s1);
        tokio::time::timeout(Duration::from_millis(200), sub.rung())
            .await
            .unwrap();
        // Another store's ring does not wake this one.
        sub.mark_seen();
        feed.wake(&s2);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), sub.rung())
                .await
                .is_err()
        );
        feed.wake_all();
        tokio::time::timeout(Duration::from_millis(200), sub.rung())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn entries_without_listeners_are_dropped() {
        let feed = ChangeFeed::new();
        let s1 = StoreId::parse("S001").unwrap();
        let sub = feed.subscribe(&s1);
        assert_eq!(feed.stores_waited_on(), 1);
        drop(sub);
        feed.wake(&s1);
        assert_eq!(feed.stores_waited_on(), 0);
        assert!(feed.stores.lock().unwrap().is_empty());
    }
}
