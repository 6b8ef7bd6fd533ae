//! A card terminal for tests and the demo, scripted with what the next authorisations do
//! (approve, approve offline, decline, hang, unavailable). It keeps the `sale_ref` contract like
//! a real terminal: a `sale_ref` it has answered gets the same answer again, never a second
//! charge. Clones share one terminal, so a test keeps a clone to script and inspect it while the
//! [`TerminalThread`](super::TerminalThread) owns another.
use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aisle_protocol::Money;

use super::{Approval, Outcome, PaymentTerminal, Reversal, SaleRef};

/// What the terminal does with the next authorisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Approve,
    /// Approved by the terminal alone (store-and-forward).
    ApproveOffline,
    Decline(String),
    /// Answers nothing for this long, then does `then` (a hung terminal: a long hang).
    Hang(Duration, Box<Behaviour>),
    Unavailable(String),
}

impl FromStr for Behaviour {
    type Err = String;
    /// `approve`, `approve-offline`, `decline REASON`, `unavailable REASON`,
    /// `hang MS [BEHAVIOUR]` (then approve by default).
    fn from_str(line: &str) -> Result<Self, String> {
        let line = line.trim();
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let words = |d: &str| {
            if rest.is_empty() {
                d.to_string()
            } else {
                rest.chars().take(120).collect()
            }
        };
        Ok(match word {
            "approve" => Behaviour::Approve,
            "approve-offline" => Behaviour::ApproveOffline,
            "decline" => Behaviour::Decline(words("do not honour")),
            "unavailable" => Behaviour::Unavailable(words("no connection to the acquirer")),
            "hang" => {
                let (ms, then) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let ms: u64 = ms
                    .parse()
                    .ok()
                    .filter(|ms| *ms <= 600_000)
                    .ok_or_else(|| format!("hang MS: milliseconds up to 600000, not {ms:?}"))?;
                let then = if then.trim().is_empty() {
                    Behaviour::Approve
                } else {
                    then.parse()?
                };
                Behaviour::Hang(Duration::from_millis(ms), Box::new(then))
            }
            _ => {
                return Err(format!(
                    "{line:?}: approve, approve-offline, decline REASON, unavailable REASON or \
                     hang MS [then]"
                ));
            }
        })
    }
}

/// One charge the terminal made (and whether it was voided since).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub approval: Approval,
    pub reversed: bool,
}

#[derive(Debug, Default)]
struct State {
    script: VecDeque<Behaviour>,
    /// Every final answer by sale_ref.
    answered: HashMap<SaleRef, Outcome>,
    cancelled: HashMap<SaleRef, ()>,
    charges: Vec<Charge>,
    authorise_calls: usize,
    next_code: u32,
}

/// See the [module](self).
#[derive(Clone, Debug, Default)]
pub struct SimulatedTerminal {
    state: Arc<Mutex<State>>,
}

impl SimulatedTerminal {
    /// A terminal that approves everything until scripted otherwise.
    pub fn new() -> Self {
        SimulatedTerminal::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the next authorisations do, in order; after the script, approve.
    pub fn script(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.state().script.extend(behaviours);
    }

    /// Every charge made, in order.
    pub fn charges(&self) -> Vec<Charge> {
        self.state().charges.clone()
    }

    /// How many times `authorise` was called (including answers from memory).
    pub fn authorise_calls(&self) -> usize {
        self.state().authorise_calls
    }
}

impl PaymentTerminal for SimulatedTerminal {
    fn authorise(&mut self, amount: Money, sale_ref: &SaleRef) -> Outcome {
        let behaviour = {
            let mut s = self.state();
            s.authorise_calls += 1;
            if s.cancelled.contains_key(sale_ref) {
                return Outcome::Declined {
                    reason: format!("sale {sale_ref} was cancelled"),
                };
            }
            if let Some(first) = s.answered.get(sale_ref) {
                return match first {
                    Outcome::Approved(a) if a.amount != amount => Outcome::Declined {
                        reason: format!(
                            "sale {sale_ref} was already approved for {}, not {amount}",
                            a.amount
                        ),
                    },
                    first => first.clone(),
                };
            }
            if amount.minor <= 0 {
                return Outcome::Declined {
                    reason: format!("{amount} is not an amount to charge"),
                };
            }
            s.script.pop_front().unwrap_or(Behaviour::Approve)
        };
        let mut behaviour = behaviour;
        while let Behaviour::Hang(d, then) = behaviour {
            std::thread::sleep(d);
            behaviour = *then;
        }
        let mut s = self.state();
        // Cancelled while it hung: the charge is voided before it is made.
        if s.cancelled.contains_key(sale_ref) {
            return Outcome::Declined {
                reason: format!("sale {sale_ref} was cancelled"),
            };
        }
        let outcome = match behaviour {
            Behaviour::Approve | Behaviour::ApproveOffline => {
                s.next_code += 1;
                let offline = behaviour == Behaviour::ApproveOffline;
                let approval = Approval {
                    sale_ref: sale_ref.clone(),
                    amount,
                    auth_code: format!("{}{:05}", if offline { "Y1" } else { "A" }, s.next_code),
                    card_last4: Some("4242".into()),
                    offline,
                };
                s.charges.push(Charge {
                    approval: approval.clone(),
                    reversed: false,
                });
                Outcome::Approved(approval)
            }
            Behaviour::Decline(reason) => Outcome::Declined { reason },
            Behaviour::Unavailable(reason) => return Outcome::Unavailable { reason },
            Behaviour::Hang(..) => Outcome::TimedOut,
        };
        s.answered.insert(sale_ref.clone(), outcome.clone());
        outcome
    }

    fn cancel(&mut self, sale_ref: &SaleRef) -> Reversal {
        let mut s = self.state();
        s.cancelled.insert(sale_ref.clone(), ());
        void(&mut s, sale_ref)
    }

    fn reverse(&mut self, approval: &Approval) -> Reversal {
        let mut s = self.state();
        void(&mut s, &approval.sale_ref)
    }
}

fn void(s: &mut State, sale_ref: &SaleRef) -> Reversal {
    match s
        .charges
        .iter_mut()
        .find(|c| &c.approval.sale_ref == sale_ref && !c.reversed)
    {
        Some(c) => {
            c.reversed = true;
            Reversal::Reversed
        }
        None => Reversal::NotCharged,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aisle_protocol::Currency;

    fn money(minor: i64) -> Money {
        Money::new(minor, Currency::parse("CNY").unwrap())
    }

    #[test]
    fn scripted_answers_and_the_same_ref_never_charges_twice() {
        let mut t = SimulatedTerminal::new();
        t.script([
            Behaviour::Decline("insufficient funds".into()),
            Behaviour::Unavailable("no line".into()),
            Behaviour::ApproveOffline,
        ]);
        let r = |s: &str| SaleRef::new(s).unwrap();
        assert_eq!(
            t.authorise(money(500), &r("s1:1")),
            Outcome::Declined {
                reason: "insufficient funds".into()
            }
        );
        // Same ref after a decline: the decline again, not the next scripted answer.
        assert!(matches!(
            t.authorise(money(500), &r("s1:1")),
            Outcome::Declined { .. }
        ));
        assert!(matches!(
            t.authorise(money(500), &r("s1:2")),
            Outcome::Unavailable { .. }
        ));
        let Outcome::Approved(a) = t.authorise(money(500), &r("s1:2")) else {
            panic!("unavailable is not final: the retry goes to the card");
        };
        assert!(a.offline && a.auth_code.starts_with("Y1"));
        assert_eq!(
            t.authorise(money(500), &r("s1:2")),
            Outcome::Approved(a.clone())
        );
        assert!(matches!(
            t.authorise(money(501), &r("s1:2")),
            Outcome::Declined { reason } if reason.contains("already approved for 5.00 CNY")
        ));
        assert_eq!(t.charges().len(), 1);
        assert_eq!(t.reverse(&a), Reversal::Reversed);
        assert_eq!(t.reverse(&a), Reversal::NotCharged);
        assert_eq!(t.cancel(&r("s9")), Reversal::NotCharged);
        assert!(matches!(
            t.authorise(money(1), &r("s9")),
            Outcome::Declined { .. }
        ));
        assert!(t.charges()[0].reversed);
    }

    #[test]
    fn behaviours_from_script_lines() {
        assert_eq!("approve".parse(), Ok(Behaviour::Approve));
        assert_eq!(
            "decline card expired".parse(),
            Ok(Behaviour::Decline("card expired".into()))
        );
        assert_eq!(
            "hang 200 decline".parse(),
            Ok(Behaviour::Hang(
                Duration::from_millis(200),
                Box::new(Behaviour::Decline("do not honour".into()))
            ))
        );
        for bad in ["", "pay", "hang", "hang x", "hang 9999999"] {
            assert!(bad.parse::<Behaviour>().is_err(), "{bad}");
        }
    }
}
