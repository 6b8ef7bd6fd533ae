//! The ledger's hash chain. Each event's hash covers the previous hash and the event's exact stored
//! bytes, so removing, reordering or editing any event breaks every hash after it.
use sha2::{Digest, Sha256};

use crate::{EventId, Hlc, UtcMillis};

/// The `prev_hash` of the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// Hash of one ledger event. `payload` is the event body exactly as stored (JSON bytes).
pub fn event_hash(
    prev: &[u8; 32],
    seq: u64,
    id: &EventId,
    hlc: Hlc,
    at: UtcMillis,
    kind: &str,
    payload: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"aisle-ledger-v1");
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(id.as_bytes());
    h.update(hlc.wall_ms.to_be_bytes());
    h.update(hlc.counter.to_be_bytes());
    h.update(at.0.to_be_bytes());
    h.update((kind.len() as u64).to_be_bytes());
    h.update(kind.as_bytes());
    h.update((payload.len() as u64).to_be_bytes());
    h.update(payload);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_field_changes_the_hash() {
        let id = EventId::from_bytes([9; 16]);
        let hlc = Hlc {
            wall_ms: 5,
            counter: 0,
        };
        let base = event_hash(&GENESIS, 1, &id, hlc, UtcMillis(5), "k", b"{}");
        assert_ne!(
            base,
            event_hash(&[1; 32], 1, &id, hlc, UtcMillis(5), "k", b"{}")
        );
        assert_ne!(
            base,
            event_hash(&GENESIS, 2, &id, hlc, UtcMillis(5), "k", b"{}")
        );
        assert_ne!(
            base,
            event_hash(&GENESIS, 1, &id, hlc, UtcMillis(6), "k", b"{}")
        );
        assert_ne!(
            base,
            event_hash(&GENESIS, 1, &id, hlc, UtcMillis(5), "kk", b"{}")
        );
        assert_ne!(
            base,
            event_hash(&GENESIS, 1, &id, hlc, UtcMillis(5), "k", b"{ }")
        );
        assert_eq!(
            base,
            event_hash(&GENESIS, 1, &id, hlc, UtcMillis(5), "k", b"{}")
        );
    }
}
