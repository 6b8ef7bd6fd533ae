//! Wall-clock time in UTC as milliseconds since the Unix epoch.
use serde::{Deserialize, Serialize};

/// A UTC instant in milliseconds since 1970-01-01T00:00:00Z. Serialised as a plain integer.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UtcMillis(pub i64);

impl UtcMillis {
    pub const MIN: UtcMillis = UtcMillis(0);

    #[cfg(feature = "std")]
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        UtcMillis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    pub fn saturating_add_ms(self, ms: i64) -> Self {
        UtcMillis(self.0.saturating_add(ms))
    }

    pub fn millis_since(self, earlier: UtcMillis) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}
