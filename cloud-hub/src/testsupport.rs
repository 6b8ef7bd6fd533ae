//! Helpers for tests and benches (here and in `hil-tests`): a throw-away PostgreSQL database.
//!
//! PostgreSQL being unreachable is an error with a clear message, never a silent skip: a test
//! that did not run must not look like a test that passed.
use std::fmt;

use rand::RngCore;

/// Environment variable naming the server (and an existing database to connect to) for tests.
pub const TEST_POSTGRES_ENV: &str = "AISLE_TEST_POSTGRES_URL";
/// Used when [`TEST_POSTGRES_ENV`] is unset.
pub const DEFAULT_TEST_POSTGRES_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

/// Why a temporary database could not be made or dropped.
#[derive(Debug, thiserror::Error)]
pub enum TestSupportError {
    #[error(
        "PostgreSQL at {url} is unreachable ({source}); start it or point {TEST_POSTGRES_ENV} at one"
    )]
    Unreachable {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("{TEST_POSTGRES_ENV} must be a postgres:// URL, got {0}")]
    BadUrl(String),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// A freshly created, randomly named database, dropped by [`cleanup`](Self::cleanup)
/// (or, best effort, when dropped).
pub struct TempPostgres {
    admin_url: String,
    name: String,
    url: String,
    dropped: bool,
}

impl fmt::Debug for TempPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TempPostgres")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TempPostgres {
    /// Creates `aisle_test_<16 hex>` on the server at [`TEST_POSTGRES_ENV`].
    pub async fn create() -> Result<Self, TestSupportError> {
        let admin_url = std::env::var(TEST_POSTGRES_ENV)
            .unwrap_or_else(|_| DEFAULT_TEST_POSTGRES_URL.to_owned());
        let mut tag = [0u8; 8];
        rand::rng().fill_bytes(&mut tag);
        let name = format!("aisle_test_{}", hex::encode(tag));
        let url = with_database(&admin_url, &name)?;
        let client = admin_client(&admin_url).await?;
        // The name is ours (letters, digits, underscore), so quoting it is enough.
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(TempPostgres {
            admin_url,
            name,
            url,
            dropped: false,
        })
    }

    /// `postgres://...` URL of the temporary database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database, disconnecting anyone still connected.
    pub async fn cleanup(mut self) -> Result<(), TestSupportError> {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime, which must not be blocked on: use a thread of our own.
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if let Err(e) = rt.block_on(drop_database(&admin_url, &name)) {
                eprintln!("could not drop test database {name}: {e}");
            }
        });
        let _ = worker.join();
    }
}

async fn admin_client(admin_url: &str) -> Result<tokio_postgres::Client, TestSupportError> {
    let shown = crate::storage::redact_url(admin_url);
    let mut config: tokio_postgres::Config = admin_url
        .parse()
        .map_err(|_| TestSupportError::BadUrl(shown.clone()))?;
    config.connect_timeout(std::time::Duration::from_secs(5));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|source| TestSupportError::Unreachable { url: shown, source })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "test admin connection ended");
        }
    });
    Ok(client)
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), TestSupportError> {
    let client = admin_client(admin_url).await?;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    Ok(())
}

/// `url` with its database name replaced by `name`, keeping any query string.
fn with_database(url: &str, name: &str) -> Result<String, TestSupportError> {
    let bad = || TestSupportError::BadUrl(crate::storage::redact_url(url));
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").ok_or_else(bad)? + 3;
    if !(base.starts_with("postgres://") || base.starts_with("postgresql://")) {
        return Err(bad());
    }
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| i + scheme_end);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x").unwrap(),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h?sslmode=disable", "x").unwrap(),
            "postgres://u@h/x?sslmode=disable"
        );
        assert!(with_database("mysql://h/db", "x").is_err());
    }
}
