//! Security on PostgreSQL: the SQL behind the token, audit, enrolment and nonce methods of
//! [`PgStorage`](super::PgStorage).
//!
//! The audit chain has one head shared by every hub process: an append takes [`AUDIT_LOCK`]
//! (`pg_advisory_xact_lock`), reads the head and inserts, and holds the lock to commit. It is
//! always the last lock a transaction takes, so it adds no lock-order cycle with
//! `CHANGEFEED_LOCK`, `SALES_LOCK`, `PICKUP_LOCK` or `LABELS_LOCK`.
use aisle_protocol::auth::MAX_CLOCK_SKEW_MS;
use aisle_protocol::{GatewayId, UtcMillis};
use deadpool_postgres::GenericClient;
use serde_json::json;
use tokio_postgres::Row;

use super::postgres::require_store;
use super::prune_now;
use super::{
    GatewayCredential, StorageError, chain_audit, parse_gateway_id, parse_store_id, to_i64, to_u64,
};
use crate::security::{
    Actor, ApiTokenInfo, AuditEntry, AuditInput, EnrolAttempt, EnrolRefusal, EnrolledGateway,
    GatewayInfo, GatewayKey, NewApiToken, NewEnrolment, NonceOutcome, Role, action,
};

/// Advisory lock serialising appends to the audit chain.
pub const AUDIT_LOCK: i64 = 0x4149_534c_4510;

/// Appends `entry` to the audit log inside the caller's transaction (last step before commit).
pub(super) async fn append_audit<C: GenericClient>(
    c: &C,
    entry: &AuditInput,
    at: UtcMillis,
) -> Result<(), StorageError> {
    append_audits(c, std::slice::from_ref(entry), at).await
}

/// Appends `entries`, in order, in one statement, inside the caller's transaction (last step
/// before commit: it takes [`AUDIT_LOCK`]).
pub(super) async fn append_audits<C: GenericClient>(
    c: &C,
    entries: &[AuditInput],
    at: UtcMillis,
) -> Result<(), StorageError> {
    if entries.is_empty() {
        return Ok(());
    }
    c.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
        .await?;
    let head = c
        .query_opt(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?
        .map(|row| Ok::<_, StorageError>((row.try_get(0)?, row.try_get(1)?)))
        .transpose()?;
    let chained = chain_audit(head, entries, at)?;
    let seqs: Vec<i64> = chained.iter().map(|a| a.seq).collect();
    let actors: Vec<&str> = chained.iter().map(|a| a.entry.actor.as_str()).collect();
    let actions: Vec<&str> = chained.iter().map(|a| a.entry.action).collect();
    let subjects: Vec<&str> = chained.iter().map(|a| a.entry.subject.as_str()).collect();
    let details: Vec<&str> = chained.iter().map(|a| a.detail.as_str()).collect();
    let hashes: Vec<&[u8]> = chained.iter().map(|a| a.hash.as_slice()).collect();
    c.execute(
        "INSERT INTO audit_log (seq, at, actor, action, subject, detail, hash)
         SELECT t.seq, $1, t.actor, t.action, t.subject, t.detail, t.hash
           FROM unnest($2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[])
             AS t(seq, actor, action, subject, detail, hash)",
        &[
            &at.0, &seqs, &actors, &actions, &subjects, &details, &hashes,
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn audit_entries<C: GenericClient>(
    c: &C,
    from: u64,
    limit: u32,
) -> Result<Vec<AuditEntry>, StorageError> {
    let rows = c
        .query(
            "SELECT seq, at, actor, action, subject, detail, hash FROM audit_log
              WHERE seq >= $1 ORDER BY seq LIMIT $2",
            &[&to_i64(from, "from")?, &i64::from(limit)],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let hash: Vec<u8> = r.try_get("hash")?;
        out.push(AuditEntry {
            seq: to_u64(r.try_get("seq")?, "audit seq")?,
            at: UtcMillis(r.try_get("at")?),
            actor: r.try_get("actor")?,
            action: r.try_get("action")?,
            subject: r.try_get("subject")?,
            detail: r.try_get("detail")?,
            hash: hex::encode(hash),
        });
    }
    Ok(out)
}

fn to_token(r: &Row) -> Result<ApiTokenInfo, StorageError> {
    let role: String = r.try_get("role")?;
    let revoked: Option<i64> = r.try_get("revoked_at")?;
    Ok(ApiTokenInfo {
        token_id: r.try_get("token_id")?,
        name: r.try_get("name")?,
        role: Role::parse(&role).map_err(StorageError::Corrupt)?,
        created_at: UtcMillis(r.try_get("created_at")?),
        revoked_at: revoked.map(UtcMillis),
    })
}

pub(super) async fn create_api_token<C: GenericClient>(
    tx: &C,
    token: &NewApiToken,
    name: &str,
    role: Role,
    actor: &Actor,
) -> Result<ApiTokenInfo, StorageError> {
    let now = UtcMillis::now();
    tx.execute(
        "INSERT INTO api_tokens (token_id, name, role, token_sha256, created_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &token.token_id,
            &name,
            &role.as_str(),
            &token.hash().as_slice(),
            &now.0,
        ],
    )
    .await?;
    append_audit(
        tx,
        &AuditInput::new(
            actor,
            action::TOKEN_CREATED,
            &token.token_id,
            json!({ "name": name, "role": role.as_str() }),
        ),
        now,
    )
    .await?;
    Ok(ApiTokenInfo {
        token_id: token.token_id.clone(),
        name: name.to_owned(),
        role,
        created_at: now,
        revoked_at: None,
    })
}

pub(super) async fn list_api_tokens<C: GenericClient>(
    c: &C,
) -> Result<Vec<ApiTokenInfo>, StorageError> {
    let rows = c
        .query(
            "SELECT token_id, name, role, created_at, revoked_at FROM api_tokens
              ORDER BY created_at, token_id",
            &[],
        )
        .await?;
    rows.iter().map(to_token).collect()
}

/// Returns false when there was nothing to do (already revoked).
pub(super) async fn revoke_api_token<C: GenericClient>(
    tx: &C,
    token_id: &str,
    actor: &Actor,
) -> Result<bool, StorageError> {
    let now = UtcMillis::now();
    let row = tx
        .query_opt(
            "SELECT revoked_at FROM api_tokens WHERE token_id = $1 FOR UPDATE",
            &[&token_id],
        )
        .await?;
    let Some(row) = row else {
        return Err(StorageError::UnknownToken(token_id.to_owned()));
    };
    let revoked: Option<i64> = row.try_get(0)?;
    if revoked.is_some() {
        return Ok(false);
    }
    tx.execute(
        "UPDATE api_tokens SET revoked_at = $2 WHERE token_id = $1",
        &[&token_id, &now.0],
    )
    .await?;
    append_audit(
        tx,
        &AuditInput::new(actor, action::TOKEN_REVOKED, token_id, json!({})),
        now,
    )
    .await?;
    Ok(true)
}

pub(super) async fn api_token_by_hash<C: GenericClient>(
    c: &C,
    hash: &[u8; 32],
) -> Result<Option<ApiTokenInfo>, StorageError> {
    c.query_opt(
        "SELECT token_id, name, role, created_at, revoked_at FROM api_tokens
          WHERE token_sha256 = $1 AND revoked_at IS NULL",
        &[&hash.as_slice()],
    )
    .await?
    .as_ref()
    .map(to_token)
    .transpose()
}

pub(super) async fn create_enrolment<C: GenericClient>(
    tx: &C,
    e: &NewEnrolment,
    actor: &Actor,
) -> Result<(), StorageError> {
    require_store(tx, &e.store).await?;
    let now = UtcMillis::now();
    tx.execute(
        "INSERT INTO enrolment_codes (code_id, code_sha256, store_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &e.code_id,
            &e.code.digest().as_slice(),
            &e.store.as_str(),
            &now.0,
            &e.expires_at.0,
        ],
    )
    .await?;
    append_audit(
        tx,
        &AuditInput::new(
            actor,
            action::ENROLMENT_CREATED,
            &e.code_id,
            json!({ "store": e.store.as_str(), "expires_at": e.expires_at.0 }),
        ),
        now,
    )
    .await
}

pub(super) async fn enrol<C: GenericClient>(
    tx: &C,
    a: &EnrolAttempt,
) -> Result<Result<EnrolledGateway, EnrolRefusal>, StorageError> {
    let actor = Actor::client(&a.client);
    // FOR UPDATE: two gateways racing with one code, one wins; the other then sees it used.
    let row = tx
        .query_opt(
            "SELECT code_id, store_id, expires_at, used_at FROM enrolment_codes
              WHERE code_sha256 = $1 FOR UPDATE",
            &[&a.code_digest.as_slice()],
        )
        .await?;
    let found = match &row {
        None => None,
        Some(r) => Some((
            r.try_get::<_, String>("code_id")?,
            r.try_get::<_, String>("store_id")?,
            r.try_get::<_, i64>("expires_at")?,
            r.try_get::<_, Option<i64>>("used_at")?,
        )),
    };
    let refusal = match &found {
        None => Some((EnrolRefusal::Unknown, None)),
        Some((id, _, _, Some(_))) => Some((EnrolRefusal::Used, Some(id.clone()))),
        Some((id, _, expires, None)) if *expires <= a.now.0 => {
            Some((EnrolRefusal::Expired, Some(id.clone())))
        }
        Some(_) => None,
    };
    if let Some((why, code_id)) = refusal {
        append_audit(
            tx,
            &AuditInput::new(
                &actor,
                action::ENROLMENT_REFUSED,
                &a.client,
                json!({ "reason": why.as_str(), "code_id": code_id, "name": a.name }),
            ),
            a.now,
        )
        .await?;
        return Ok(Err(why));
    }
    let Some((code_id, store, _, _)) = found else {
        return Err(StorageError::Corrupt("enrolment row vanished".into()));
    };
    let store = parse_store_id(&store)?;
    for _ in 0..8 {
        // The secret is drawn and dropped: an enrolled gateway proves itself with its key.
        let cred = GatewayCredential::generate(&store)?;
        let n = tx
            .execute(
                "INSERT INTO gateways (gateway_id, store_id, secret_sha256, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (gateway_id) DO NOTHING",
                &[
                    &cred.gateway_id.as_str(),
                    &store.as_str(),
                    &cred.secret_hash().as_slice(),
                    &a.now.0,
                ],
            )
            .await?;
        if n == 0 {
            continue;
        }
        tx.execute(
            "INSERT INTO gateway_keys (gateway_id, public_key, name, code_id, enrolled_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &cred.gateway_id.as_str(),
                &a.public_key,
                &a.name,
                &code_id,
                &a.now.0,
            ],
        )
        .await?;
        tx.execute(
            "UPDATE enrolment_codes SET used_at = $2, gateway_id = $3 WHERE code_id = $1",
            &[&code_id, &a.now.0, &cred.gateway_id.as_str()],
        )
        .await?;
        append_audit(
            tx,
            &AuditInput::new(
                &actor,
                action::ENROLMENT_SUCCEEDED,
                cred.gateway_id.as_str(),
                json!({
                    "store": store.as_str(),
                    "code_id": code_id,
                    "name": a.name,
                    "public_key": a.public_key,
                }),
            ),
            a.now,
        )
        .await?;
        return Ok(Ok(EnrolledGateway {
            gateway_id: cred.gateway_id,
            store,
        }));
    }
    Err(StorageError::Unavailable(
        "could not draw an unused gateway id".into(),
    ))
}

pub(super) async fn enrol_refusals_since<C: GenericClient>(
    c: &C,
    client: &str,
    since: UtcMillis,
) -> Result<u64, StorageError> {
    let n: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM audit_log WHERE action = $1 AND subject = $2 AND at >= $3",
            &[&action::ENROLMENT_REFUSED, &client, &since.0],
        )
        .await?
        .try_get(0)?;
    to_u64(n, "count")
}

pub(super) async fn gateway_key<C: GenericClient>(
    c: &C,
    gateway: &GatewayId,
) -> Result<Option<GatewayKey>, StorageError> {
    let row = c
        .query_opt(
            "SELECT g.store_id, k.public_key, g.revoked_at
               FROM gateway_keys k JOIN gateways g ON g.gateway_id = k.gateway_id
              WHERE k.gateway_id = $1",
            &[&gateway.as_str()],
        )
        .await?;
    row.map(|r| {
        let revoked: Option<i64> = r.try_get("revoked_at")?;
        Ok(GatewayKey {
            store: parse_store_id(r.try_get("store_id")?)?,
            public_key: r.try_get("public_key")?,
            revoked: revoked.is_some(),
        })
    })
    .transpose()
}

/// Nonces are written with `synchronous_commit` off (for this transaction only): a commit then
/// waits for no WAL flush. PostgreSQL still applies it atomically and in order; a crash of the
/// database server may forget the last few hundred milliseconds of nonces, which a replay
/// could then reuse only within the remaining clock window of those very requests.
pub(super) async fn remember_nonce(
    client: &mut deadpool_postgres::Object,
    gateway: &GatewayId,
    nonce: &str,
    expires_at: UtcMillis,
    now: UtcMillis,
) -> Result<NonceOutcome, StorageError> {
    // Every signed request pays for this, so it is one round trip: the transaction, its
    // asynchronous commit (see the crate docs: a nonce lost with the last few milliseconds
    // before a crash could be replayed inside its 5-minute window, against a TLS link), the
    // revocation check and the insert travel as one simple-query string. The simple protocol
    // takes no parameters, so the values are inlined; each is checked here to be made only of
    // characters that need no quoting (the gateway id and nonce were validated before, and
    // this refuses anything else rather than trusting that).
    let plain = |v: &str| {
        !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !plain(gateway.as_str()) || !plain(nonce) {
        return Err(StorageError::InvalidInput(
            "a gateway id or nonce with unexpected characters".into(),
        ));
    }
    let gw = gateway.as_str();
    let expires = expires_at.0.max(now.0.saturating_add(MAX_CLOCK_SKEW_MS));
    let prune = if prune_now() {
        format!("DELETE FROM gateway_nonces WHERE expires_at < {};", now.0)
    } else {
        String::new()
    };
    // Recorded only while the gateway is live: the revocation check and the nonce are one
    // statement, so a revocation committed before it is always seen.
    let sql = format!(
        "BEGIN; SET LOCAL synchronous_commit TO OFF; {prune}
         WITH ins AS (
             INSERT INTO gateway_nonces (gateway_id, nonce, expires_at)
             SELECT '{gw}', '{nonce}', {expires} WHERE EXISTS (
                 SELECT 1 FROM gateways WHERE gateway_id = '{gw}' AND revoked_at IS NULL)
             ON CONFLICT (gateway_id, nonce) DO NOTHING
             RETURNING 1)
         SELECT (SELECT count(*) FROM ins)::text,
                (SELECT (revoked_at IS NULL)::text FROM gateways WHERE gateway_id = '{gw}');
         COMMIT;"
    );
    let messages = match client.simple_query(&sql).await {
        Ok(m) => m,
        Err(e) => {
            // A failed statement leaves the transaction aborted on this connection.
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e.into());
        }
    };
    let row = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    });
    let Some(row) = row else {
        return Err(StorageError::Corrupt(
            "the nonce statement answered no row".into(),
        ));
    };
    let inserted = row.get(0) == Some("1");
    let live = row.get(1) == Some("true");
    Ok(if inserted {
        NonceOutcome::Fresh
    } else if live {
        NonceOutcome::Replayed
    } else {
        NonceOutcome::Revoked
    })
}

pub(super) async fn list_gateways<C: GenericClient>(
    c: &C,
) -> Result<Vec<GatewayInfo>, StorageError> {
    let rows = c
        .query(
            "SELECT g.gateway_id, g.store_id, g.created_at, g.revoked_at, k.name
               FROM gateways g LEFT JOIN gateway_keys k ON k.gateway_id = g.gateway_id
              ORDER BY g.store_id, g.gateway_id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let revoked: Option<i64> = r.try_get("revoked_at")?;
            Ok(GatewayInfo {
                gateway_id: parse_gateway_id(r.try_get("gateway_id")?)?,
                store: parse_store_id(r.try_get("store_id")?)?,
                created_at: UtcMillis(r.try_get("created_at")?),
                revoked_at: revoked.map(UtcMillis),
                enrolled_name: r.try_get("name")?,
            })
        })
        .collect()
}
