//! Security on SQLite: the SQL behind the token, audit, enrolment and nonce methods of
//! [`SqliteStorage`](super::SqliteStorage). Writers run in `BEGIN IMMEDIATE` transactions on
//! the single write connection, so the audit chain's head cannot move under an append.
use aisle_protocol::auth::MAX_CLOCK_SKEW_MS;
use aisle_protocol::{GatewayId, UtcMillis};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::prune_now;
use super::sqlite::{immediate, require_store};
use super::{
    GatewayCredential, StorageError, chain_audit, parse_gateway_id, parse_store_id, to_i64, to_u64,
};
use crate::security::{
    Actor, ApiTokenInfo, AuditEntry, AuditInput, EnrolAttempt, EnrolRefusal, EnrolledGateway,
    GatewayInfo, GatewayKey, NewApiToken, NewEnrolment, NonceOutcome, Role, action,
};

/// Appends `entry` to the audit log inside the caller's transaction.
pub(super) fn append_audit(
    c: &Connection,
    entry: &AuditInput,
    at: UtcMillis,
) -> Result<(), StorageError> {
    append_audits(c, std::slice::from_ref(entry), at)
}

/// Appends `entries`, in order, to the audit log inside the caller's transaction.
pub(super) fn append_audits(
    c: &Connection,
    entries: &[AuditInput],
    at: UtcMillis,
) -> Result<(), StorageError> {
    if entries.is_empty() {
        return Ok(());
    }
    let head: Option<(i64, Vec<u8>)> = c
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let mut insert = c.prepare_cached(
        "INSERT INTO audit_log (seq, at, actor, action, subject, detail, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for a in chain_audit(head, entries, at)? {
        insert.execute(params![
            a.seq,
            at.0,
            a.entry.actor.as_str(),
            a.entry.action,
            a.entry.subject,
            a.detail,
            a.hash.to_vec()
        ])?;
    }
    Ok(())
}

pub(super) fn append_audit_tx(
    conn: &mut Connection,
    entry: &AuditInput,
) -> Result<(), StorageError> {
    let tx = immediate(conn)?;
    append_audit(&tx, entry, UtcMillis::now())?;
    tx.commit()?;
    Ok(())
}

pub(super) fn audit_entries(
    conn: &mut Connection,
    from: u64,
    limit: u32,
) -> Result<Vec<AuditEntry>, StorageError> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, subject, detail, hash FROM audit_log
          WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![to_i64(from, "from")?, i64::from(limit)], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, Vec<u8>>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, at, actor, action, subject, detail, hash) = row?;
        out.push(AuditEntry {
            seq: to_u64(seq, "audit seq")?,
            at: UtcMillis(at),
            actor,
            action,
            subject,
            detail,
            hash: hex::encode(hash),
        });
    }
    Ok(out)
}

fn token_from_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, String, String, i64, Option<i64>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_token(raw: (String, String, String, i64, Option<i64>)) -> Result<ApiTokenInfo, StorageError> {
    Ok(ApiTokenInfo {
        token_id: raw.0,
        name: raw.1,
        role: Role::parse(&raw.2).map_err(StorageError::Corrupt)?,
        created_at: UtcMillis(raw.3),
        revoked_at: raw.4.map(UtcMillis),
    })
}

pub(super) fn create_api_token(
    conn: &mut Connection,
    token: &NewApiToken,
    name: &str,
    role: Role,
    actor: &Actor,
) -> Result<ApiTokenInfo, StorageError> {
    let tx = immediate(conn)?;
    let now = UtcMillis::now();
    tx.execute(
        "INSERT INTO api_tokens (token_id, name, role, token_sha256, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            token.token_id,
            name,
            role.as_str(),
            token.hash().to_vec(),
            now.0
        ],
    )?;
    append_audit(
        &tx,
        &AuditInput::new(
            actor,
            action::TOKEN_CREATED,
            &token.token_id,
            json!({ "name": name, "role": role.as_str() }),
        ),
        now,
    )?;
    tx.commit()?;
    Ok(ApiTokenInfo {
        token_id: token.token_id.clone(),
        name: name.to_owned(),
        role,
        created_at: now,
        revoked_at: None,
    })
}

pub(super) fn list_api_tokens(conn: &mut Connection) -> Result<Vec<ApiTokenInfo>, StorageError> {
    let mut stmt = conn.prepare(
        "SELECT token_id, name, role, created_at, revoked_at FROM api_tokens
          ORDER BY created_at, token_id",
    )?;
    let rows = stmt.query_map([], token_from_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(to_token(row?)?);
    }
    Ok(out)
}

pub(super) fn revoke_api_token(
    conn: &mut Connection,
    token_id: &str,
    actor: &Actor,
) -> Result<(), StorageError> {
    let tx = immediate(conn)?;
    let now = UtcMillis::now();
    let revoked: Option<Option<i64>> = tx
        .query_row(
            "SELECT revoked_at FROM api_tokens WHERE token_id = ?1",
            [token_id],
            |r| r.get(0),
        )
        .optional()?;
    match revoked {
        None => return Err(StorageError::UnknownToken(token_id.to_owned())),
        Some(Some(_)) => return Ok(()),
        Some(None) => {}
    }
    tx.execute(
        "UPDATE api_tokens SET revoked_at = ?2 WHERE token_id = ?1",
        params![token_id, now.0],
    )?;
    append_audit(
        &tx,
        &AuditInput::new(actor, action::TOKEN_REVOKED, token_id, json!({})),
        now,
    )?;
    tx.commit()?;
    Ok(())
}

pub(super) fn api_token_by_hash(
    conn: &mut Connection,
    hash: &[u8; 32],
) -> Result<Option<ApiTokenInfo>, StorageError> {
    conn.query_row(
        "SELECT token_id, name, role, created_at, revoked_at FROM api_tokens
          WHERE token_sha256 = ?1 AND revoked_at IS NULL",
        [hash.to_vec()],
        token_from_row,
    )
    .optional()?
    .map(to_token)
    .transpose()
}

pub(super) fn create_enrolment(
    conn: &mut Connection,
    e: &NewEnrolment,
    actor: &Actor,
) -> Result<(), StorageError> {
    let tx = immediate(conn)?;
    require_store(&tx, &e.store)?;
    let now = UtcMillis::now();
    tx.execute(
        "INSERT INTO enrolment_codes (code_id, code_sha256, store_id, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            e.code_id,
            e.code.digest().to_vec(),
            e.store.as_str(),
            now.0,
            e.expires_at.0
        ],
    )?;
    append_audit(
        &tx,
        &AuditInput::new(
            actor,
            action::ENROLMENT_CREATED,
            &e.code_id,
            json!({ "store": e.store.as_str(), "expires_at": e.expires_at.0 }),
        ),
        now,
    )?;
    tx.commit()?;
    Ok(())
}

pub(super) fn enrol(
    conn: &mut Connection,
    a: &EnrolAttempt,
) -> Result<Result<EnrolledGateway, EnrolRefusal>, StorageError> {
    let tx = immediate(conn)?;
    let actor = Actor::client(&a.client);
    let row: Option<(String, String, i64, Option<i64>)> = tx
        .query_row(
            "SELECT code_id, store_id, expires_at, used_at FROM enrolment_codes WHERE code_sha256 = ?1",
            [a.code_digest.to_vec()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let refusal = match &row {
        None => Some((EnrolRefusal::Unknown, None)),
        Some((id, _, _, Some(_))) => Some((EnrolRefusal::Used, Some(id.clone()))),
        Some((id, _, expires, None)) if *expires <= a.now.0 => {
            Some((EnrolRefusal::Expired, Some(id.clone())))
        }
        Some(_) => None,
    };
    if let Some((why, code_id)) = refusal {
        append_audit(
            &tx,
            &AuditInput::new(
                &actor,
                action::ENROLMENT_REFUSED,
                &a.client,
                json!({ "reason": why.as_str(), "code_id": code_id, "name": a.name }),
            ),
            a.now,
        )?;
        tx.commit()?;
        return Ok(Err(why));
    }
    let Some((code_id, store, _, _)) = row else {
        return Err(StorageError::Corrupt("enrolment row vanished".into()));
    };
    let store = parse_store_id(&store)?;
    for _ in 0..8 {
        // The secret is drawn and dropped: an enrolled gateway proves itself with its key.
        let cred = GatewayCredential::generate(&store)?;
        let n = tx.execute(
            "INSERT INTO gateways (gateway_id, store_id, secret_sha256, created_at)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (gateway_id) DO NOTHING",
            params![
                cred.gateway_id.as_str(),
                store.as_str(),
                cred.secret_hash().to_vec(),
                a.now.0
            ],
        )?;
        if n == 0 {
            continue;
        }
        tx.execute(
            "INSERT INTO gateway_keys (gateway_id, public_key, name, code_id, enrolled_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                cred.gateway_id.as_str(),
                a.public_key,
                a.name,
                code_id,
                a.now.0
            ],
        )?;
        tx.execute(
            "UPDATE enrolment_codes SET used_at = ?2, gateway_id = ?3 WHERE code_id = ?1",
            params![code_id, a.now.0, cred.gateway_id.as_str()],
        )?;
        append_audit(
            &tx,
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
        )?;
        tx.commit()?;
        return Ok(Ok(EnrolledGateway {
            gateway_id: cred.gateway_id,
            store,
        }));
    }
    Err(StorageError::Unavailable(
        "could not draw an unused gateway id".into(),
    ))
}

pub(super) fn enrol_refusals_since(
    conn: &mut Connection,
    client: &str,
    since: UtcMillis,
) -> Result<u64, StorageError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM audit_log WHERE action = ?1 AND subject = ?2 AND at >= ?3",
        params![action::ENROLMENT_REFUSED, client, since.0],
        |r| r.get(0),
    )?;
    to_u64(n, "count")
}

pub(super) fn gateway_key(
    conn: &mut Connection,
    gateway: &GatewayId,
) -> Result<Option<GatewayKey>, StorageError> {
    let row: Option<(String, String, Option<i64>)> = conn
        .query_row(
            "SELECT g.store_id, k.public_key, g.revoked_at
               FROM gateway_keys k JOIN gateways g ON g.gateway_id = k.gateway_id
              WHERE k.gateway_id = ?1",
            [gateway.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    row.map(|(store, public_key, revoked)| {
        Ok(GatewayKey {
            store: parse_store_id(&store)?,
            public_key,
            revoked: revoked.is_some(),
        })
    })
    .transpose()
}

pub(super) fn remember_nonce(
    conn: &mut Connection,
    gateway: &GatewayId,
    nonce: &str,
    expires_at: UtcMillis,
    now: UtcMillis,
) -> Result<NonceOutcome, StorageError> {
    let tx = immediate(conn)?;
    if prune_now() {
        tx.execute("DELETE FROM gateway_nonces WHERE expires_at < ?1", [now.0])?;
    }
    // Recorded only while the gateway is live: the revocation check and the nonce are one
    // statement, so a revocation committed before it is always seen.
    let n = tx.execute(
        "INSERT INTO gateway_nonces (gateway_id, nonce, expires_at)
         SELECT ?1, ?2, ?3 WHERE EXISTS (
             SELECT 1 FROM gateways WHERE gateway_id = ?1 AND revoked_at IS NULL)
         ON CONFLICT (gateway_id, nonce) DO NOTHING",
        params![
            gateway.as_str(),
            nonce,
            expires_at.0.max(now.0.saturating_add(MAX_CLOCK_SKEW_MS))
        ],
    )?;
    let outcome = if n == 1 {
        NonceOutcome::Fresh
    } else {
        let live: Option<bool> = tx
            .query_row(
                "SELECT revoked_at IS NULL FROM gateways WHERE gateway_id = ?1",
                [gateway.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        if live == Some(true) {
            NonceOutcome::Replayed
        } else {
            NonceOutcome::Revoked
        }
    };
    tx.commit()?;
    Ok(outcome)
}

pub(super) fn list_gateways(conn: &mut Connection) -> Result<Vec<GatewayInfo>, StorageError> {
    let mut stmt = conn.prepare(
        "SELECT g.gateway_id, g.store_id, g.created_at, g.revoked_at, k.name
           FROM gateways g LEFT JOIN gateway_keys k ON k.gateway_id = g.gateway_id
          ORDER BY g.store_id, g.gateway_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, store, created, revoked, name) = row?;
        out.push(GatewayInfo {
            gateway_id: parse_gateway_id(&id)?,
            store: parse_store_id(&store)?,
            created_at: UtcMillis(created),
            revoked_at: revoked.map(UtcMillis),
            enrolled_name: name,
        });
    }
    Ok(out)
}
