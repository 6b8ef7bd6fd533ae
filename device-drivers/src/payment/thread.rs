//! A payment terminal on its own thread, every call bounded by a timeout, and the `sale_ref`
//! contract kept here too (see the [module](super)).
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aisle_protocol::Money;

use super::{Approval, Outcome, PaymentError, PaymentTerminal, Reversal, SaleRef};

/// How the thread is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TerminalThreadConfig {
    /// Final outcomes remembered for retries (oldest forgotten first).
    pub remembered: usize,
    /// Requests that may wait behind a busy terminal.
    pub queue: usize,
}

impl Default for TerminalThreadConfig {
    fn default() -> Self {
        TerminalThreadConfig {
            remembered: 1024,
            queue: 4,
        }
    }
}

enum Job {
    Authorise(Money, SaleRef, SyncSender<Outcome>),
    Cancel(SaleRef, SyncSender<Reversal>),
    Reverse(Approval, SyncSender<Reversal>),
}

#[derive(Default)]
struct Memory {
    /// Final outcomes by sale_ref, with their order for forgetting.
    outcomes: HashMap<SaleRef, Outcome>,
    order: VecDeque<SaleRef>,
    /// The sale_refs handed to the terminal and not answered yet.
    in_flight: HashMap<SaleRef, ()>,
}

impl Memory {
    fn remember(&mut self, r: &SaleRef, o: &Outcome, limit: usize) {
        if !o.is_final() || self.outcomes.contains_key(r) {
            return;
        }
        self.outcomes.insert(r.clone(), o.clone());
        if !self.order.contains(r) {
            self.order.push_back(r.clone());
        }
        while self.order.len() > limit.max(1) {
            if let Some(old) = self.order.pop_front() {
                self.outcomes.remove(&old);
            }
        }
    }
}

/// The lane's handle on a terminal (see the [module](super)). Its calls block the calling thread
/// for at most their timeout: call them from `spawn_blocking`.
pub struct TerminalThread {
    jobs: Option<SyncSender<Job>>,
    /// Notified whenever a call leaves `in_flight`.
    memory: Arc<(Mutex<Memory>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TerminalThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalThread").finish_non_exhaustive()
    }
}

impl TerminalThread {
    /// Starts the thread `payment-terminal` that owns `terminal`.
    pub fn spawn<T: PaymentTerminal>(
        terminal: T,
        config: TerminalThreadConfig,
    ) -> Result<TerminalThread, PaymentError> {
        let (tx, rx) = sync_channel(config.queue.max(1));
        let memory = Arc::new((Mutex::new(Memory::default()), Condvar::new()));
        let m = Arc::clone(&memory);
        let thread = std::thread::Builder::new()
            .name("payment-terminal".into())
            .spawn(move || run(terminal, rx, m, config.remembered))
            .map_err(|e| PaymentError::Thread(e.to_string()))?;
        Ok(TerminalThread {
            jobs: Some(tx),
            memory,
            thread: Some(thread),
        })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, job: Job) -> Result<(), String> {
        let jobs = self.jobs.as_ref().ok_or("the terminal is stopping")?;
        match jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                Err("the terminal is still busy with an earlier request".into())
            }
            Err(TrySendError::Disconnected(_)) => Err("the terminal thread has stopped".into()),
        }
    }

    /// Authorises `amount` under `sale_ref`, waiting at most `timeout`.
    ///
    /// A `sale_ref` answered before (approved or declined) is answered from memory; one whose
    /// first call is still with the terminal gives [`Outcome::TimedOut`] again without a second
    /// call: it waits (up to `timeout`) for that first call's answer. A hung terminal gives
    /// `TimedOut` at `timeout`; its late answer is kept for the retry.
    pub fn authorise(&self, amount: Money, sale_ref: &SaleRef, timeout: Duration) -> Outcome {
        let until = Instant::now() + timeout;
        let rx = {
            let mut m = self.memory();
            loop {
                if let Some(first) = m.outcomes.get(sale_ref) {
                    return match first {
                        // The same key for another amount is a caller's bug: never the
                        // approval of a different amount.
                        Outcome::Approved(a) if a.amount != amount => Outcome::Declined {
                            reason: format!(
                                "sale {sale_ref} was already approved for {}, not {amount}",
                                a.amount
                            ),
                        },
                        first => first.clone(),
                    };
                }
                if !m.in_flight.contains_key(sale_ref) {
                    // Never asked, or its answer charged nothing (unavailable): ask.
                    break;
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Outcome::TimedOut;
                }
                m = self
                    .memory
                    .1
                    .wait_timeout(m, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let (tx, rx) = sync_channel(1);
            if let Err(reason) = self.send(Job::Authorise(amount, sale_ref.clone(), tx)) {
                return Outcome::Unavailable { reason };
            }
            m.in_flight.insert(sale_ref.clone(), ());
            rx
        };
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(o) => o,
            Err(RecvTimeoutError::Timeout) => Outcome::TimedOut,
            Err(RecvTimeoutError::Disconnected) => Outcome::Unavailable {
                reason: "the terminal thread has stopped".into(),
            },
        }
    }

    /// Gives up on `sale_ref` (see [`PaymentTerminal::cancel`]). Waits at most `timeout`; a
    /// terminal still hung on it gives [`Reversal::Failed`] and the cancel stays queued behind it.
    pub fn cancel(&self, sale_ref: &SaleRef, timeout: Duration) -> Reversal {
        let (tx, rx) = sync_channel(1);
        self.reversal(Job::Cancel(sale_ref.clone(), tx), rx, timeout)
    }

    /// Reverses an approval whose sale could not be committed.
    pub fn reverse(&self, approval: &Approval, timeout: Duration) -> Reversal {
        let (tx, rx) = sync_channel(1);
        self.reversal(Job::Reverse(approval.clone(), tx), rx, timeout)
    }

    fn reversal(&self, job: Job, rx: Receiver<Reversal>, timeout: Duration) -> Reversal {
        if let Err(reason) = self.send(job) {
            return Reversal::Failed { reason };
        }
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(_) => Reversal::Failed {
                reason: "the terminal did not answer in time".into(),
            },
        }
    }
}

impl Drop for TerminalThread {
    fn drop(&mut self) {
        self.jobs = None;
        // A terminal hung for good must not hang the lane's shutdown: detach it then.
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}

fn run<T: PaymentTerminal>(
    mut terminal: T,
    jobs: Receiver<Job>,
    memory: Arc<(Mutex<Memory>, Condvar)>,
    remembered: usize,
) {
    let lock = || memory.0.lock().unwrap_or_else(PoisonError::into_inner);
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Authorise(amount, sale_ref, reply) => {
                let outcome = terminal.authorise(amount, &sale_ref);
                {
                    let mut m = lock();
                    m.remember(&sale_ref, &outcome, remembered);
                    m.in_flight.remove(&sale_ref);
                }
                memory.1.notify_all();
                let _ = reply.try_send(outcome);
            }
            Job::Cancel(sale_ref, reply) => {
                let r = terminal.cancel(&sale_ref);
                // A retry of a cancelled sale_ref is a decline, whatever was remembered.
                let mut m = lock();
                m.outcomes.remove(&sale_ref);
                let declined = Outcome::Declined {
                    reason: format!("sale {sale_ref} was cancelled"),
                };
                m.remember(&sale_ref, &declined, remembered);
                drop(m);
                let _ = reply.try_send(r);
            }
            Job::Reverse(approval, reply) => {
                let _ = reply.try_send(terminal.reverse(&approval));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Instant;

    use super::*;
    use crate::payment::{Behaviour, SimulatedTerminal};
    use aisle_protocol::Currency;

    fn money(minor: i64) -> Money {
        Money::new(minor, Currency::parse("CNY").unwrap())
    }

    fn r(s: &str) -> SaleRef {
        SaleRef::new(s).unwrap()
    }

    const SHORT: Duration = Duration::from_millis(100);
    const LONG: Duration = Duration::from_secs(5);

    #[test]
    fn a_hung_terminal_times_out_and_a_retry_never_charges_twice() {
        let sim = SimulatedTerminal::new();
        sim.script([Behaviour::Hang(
            Duration::from_millis(400),
            Box::new(Behaviour::Approve),
        )]);
        let t = TerminalThread::spawn(sim.clone(), TerminalThreadConfig::default()).unwrap();
        let started = Instant::now();
        assert_eq!(t.authorise(money(1280), &r("s1"), SHORT), Outcome::TimedOut);
        assert!(
            started.elapsed() < Duration::from_millis(350),
            "bounded by the timeout"
        );
        // Retried while the first call still hangs: TimedOut again, no second call.
        assert_eq!(t.authorise(money(1280), &r("s1"), SHORT), Outcome::TimedOut);
        // A retry waits for the first call's answer.
        let Outcome::Approved(a) = t.authorise(money(1280), &r("s1"), LONG) else {
            panic!("the late approval is kept for the retry");
        };
        assert_eq!(a.amount, money(1280));
        assert_eq!(sim.authorise_calls(), 1, "one call to the terminal");
        assert_eq!(sim.charges().len(), 1, "charged once");
    }

    #[test]
    fn a_terminal_that_forgets_is_still_not_asked_twice() {
        // A terminal that would charge every call (breaks the contract).
        struct Forgetful(Arc<Mutex<u32>>);
        impl PaymentTerminal for Forgetful {
            fn authorise(&mut self, amount: Money, sale_ref: &SaleRef) -> Outcome {
                let mut n = self.0.lock().unwrap();
                *n += 1;
                Outcome::Approved(Approval {
                    sale_ref: sale_ref.clone(),
                    amount,
                    auth_code: format!("X{n}"),
                    card_last4: None,
                    offline: false,
                })
            }
            fn cancel(&mut self, _: &SaleRef) -> Reversal {
                Reversal::Reversed
            }
            fn reverse(&mut self, _: &Approval) -> Reversal {
                Reversal::Reversed
            }
        }
        let n = Arc::new(Mutex::new(0));
        let t =
            TerminalThread::spawn(Forgetful(n.clone()), TerminalThreadConfig::default()).unwrap();
        let first = t.authorise(money(5), &r("s1"), LONG);
        assert_eq!(t.authorise(money(5), &r("s1"), LONG), first);
        assert!(matches!(
            t.authorise(money(6), &r("s1"), LONG),
            Outcome::Declined { reason } if reason.contains("already approved for 0.05 CNY")
        ));
        assert_eq!(*n.lock().unwrap(), 1);
    }

    #[test]
    fn cancel_after_a_timeout_voids_the_late_charge() {
        let sim = SimulatedTerminal::new();
        sim.script([Behaviour::Hang(
            Duration::from_millis(300),
            Box::new(Behaviour::Approve),
        )]);
        let t = TerminalThread::spawn(sim.clone(), TerminalThreadConfig::default()).unwrap();
        assert_eq!(t.authorise(money(100), &r("s2"), SHORT), Outcome::TimedOut);
        // The cancel waits behind the hang, then voids the charge it made.
        assert_eq!(t.cancel(&r("s2"), LONG), Reversal::Reversed);
        assert!(sim.charges().iter().all(|c| c.reversed));
        assert!(matches!(
            t.authorise(money(100), &r("s2"), LONG),
            Outcome::Declined { reason } if reason.contains("cancelled")
        ));
    }

    #[test]
    fn a_full_queue_is_unavailable_and_charges_nothing() {
        let sim = SimulatedTerminal::new();
        sim.script([Behaviour::Hang(
            Duration::from_millis(300),
            Box::new(Behaviour::Approve),
        )]);
        let t = TerminalThread::spawn(
            sim.clone(),
            TerminalThreadConfig {
                remembered: 8,
                queue: 1,
            },
        )
        .unwrap();
        assert_eq!(t.authorise(money(1), &r("a"), SHORT), Outcome::TimedOut);
        assert_eq!(
            t.authorise(money(1), &r("b"), Duration::ZERO),
            Outcome::TimedOut
        );
        assert!(matches!(
            t.authorise(money(1), &r("c"), SHORT),
            Outcome::Unavailable { reason } if reason.contains("busy")
        ));
        assert!(matches!(
            t.authorise(money(1), &r("b"), LONG),
            Outcome::Approved(_)
        ));
        // "c" was never handed over: a retry goes to the card.
        assert!(matches!(
            t.authorise(money(1), &r("c"), LONG),
            Outcome::Approved(_)
        ));
        assert_eq!(sim.charges().len(), 3);
    }

    #[test]
    fn sale_refs_are_validated() {
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert!(SaleRef::new(bad).is_err(), "{bad}");
        }
        assert!(SaleRef::new("S-0193abc:2").is_ok());
    }
}
