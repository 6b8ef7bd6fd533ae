-- aisle-hub schema for SQLite. Idempotent: run on every open. Times are UTC milliseconds.
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS stores (
    store_id   TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    currency   TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS gateways (
    gateway_id     TEXT PRIMARY KEY,
    store_id       TEXT NOT NULL REFERENCES stores (store_id),
    secret_sha256  BLOB NOT NULL,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    acked_through  INTEGER NOT NULL DEFAULT 0,
    last_upload_at INTEGER
);

-- The current price of each product at each store; version rises by one per batch.
CREATE TABLE IF NOT EXISTS prices (
    store_id     TEXT NOT NULL REFERENCES stores (store_id),
    gtin         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    price_minor  INTEGER NOT NULL,
    currency     TEXT NOT NULL,
    name         TEXT NOT NULL,
    batch_id     TEXT NOT NULL,
    effective_at INTEGER NOT NULL,
    PRIMARY KEY (store_id, gtin)
);

CREATE TABLE IF NOT EXISTS price_batches (
    batch_id     TEXT PRIMARY KEY,
    created_at   INTEGER NOT NULL,
    effective_at INTEGER NOT NULL,
    items        INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS price_batch_stores (
    batch_id TEXT NOT NULL REFERENCES price_batches (batch_id),
    store_id TEXT NOT NULL REFERENCES stores (store_id),
    items    INTEGER NOT NULL,
    PRIMARY KEY (batch_id, store_id)
);

-- The changefeed. AUTOINCREMENT: a seq is never handed out twice, even after compaction.
CREATE TABLE IF NOT EXISTS changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    store_id   TEXT NOT NULL,
    kind       TEXT NOT NULL,
    gtin       TEXT,
    version    INTEGER,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_store ON changes (store_id, seq);

-- Every uploaded ledger event, under UNIQUE (gateway, seq).
CREATE TABLE IF NOT EXISTS events (
    gateway_id  TEXT NOT NULL REFERENCES gateways (gateway_id),
    seq         INTEGER NOT NULL,
    event_id    TEXT NOT NULL,
    store_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    hlc_wall    INTEGER NOT NULL,
    hlc_counter INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    payload     TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, seq)
);

CREATE TABLE IF NOT EXISTS sales (
    hub_seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    store_id    TEXT NOT NULL,
    gateway_id  TEXT NOT NULL,
    sale_id     TEXT NOT NULL,
    sold_at     INTEGER NOT NULL,
    total_minor INTEGER NOT NULL,
    currency    TEXT NOT NULL,
    record      TEXT NOT NULL,
    -- A sale id is the lane's idempotency key inside one gateway's ledger; two gateways of one
    -- store may use the same id for different sales, and both count.
    UNIQUE (gateway_id, sale_id)
);
CREATE INDEX IF NOT EXISTS sales_by_store ON sales (store_id, hub_seq);
CREATE INDEX IF NOT EXISTS sales_by_time ON sales (store_id, sold_at);

-- Commutative stock deltas from every channel, each keyed by what caused it.
CREATE TABLE IF NOT EXISTS stock_deltas (
    delta_key  TEXT PRIMARY KEY,
    store_id   TEXT NOT NULL,
    gtin       TEXT NOT NULL,
    delta      INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS stock_by_gtin ON stock_deltas (store_id, gtin);

CREATE TABLE IF NOT EXISTS stock_adjustments (
    adjustment_id TEXT PRIMARY KEY,
    store_id      TEXT NOT NULL REFERENCES stores (store_id),
    gtin          TEXT NOT NULL,
    delta         INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    change_seq    INTEGER NOT NULL
);

-- PriceStaged / PriceActivated events, one row per event id.
CREATE TABLE IF NOT EXISTS batch_progress (
    event_id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    store_id TEXT NOT NULL,
    gtin     TEXT NOT NULL,
    version  INTEGER NOT NULL,
    kind     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS progress_by_batch ON batch_progress (batch_id, store_id, kind, gtin);

-- FootfallCounted events, one row per event id (a replayed upload adds nothing). Rows are
-- additive: several events for one (store, zone, start) are summed by the footfall report.
-- cameras_missing is a sorted JSON array of camera names, NULL when every camera reported.
CREATE TABLE IF NOT EXISTS footfall (
    event_id        TEXT PRIMARY KEY,
    store_id        TEXT NOT NULL,
    zone            TEXT NOT NULL,
    start_ms        INTEGER NOT NULL,
    entered         INTEGER NOT NULL,
    exited          INTEGER NOT NULL,
    occupancy       INTEGER,
    cameras_missing TEXT,
    at              INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS footfall_by_store ON footfall (store_id, start_ms);

-- ---- Click-and-collect (schema version 3) ----

-- The hub's Ed25519 pickup signing keys (32-byte seeds). Generated on first use; the public key
-- goes to every store as a `pickup_key` change.
CREATE TABLE IF NOT EXISTS pickup_keys (
    key_id     INTEGER PRIMARY KEY,
    seed       BLOB NOT NULL,
    public_key TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Which store's changefeed carries which key: each key once per store.
CREATE TABLE IF NOT EXISTS pickup_key_stores (
    key_id     INTEGER NOT NULL,
    store_id   TEXT NOT NULL,
    change_seq INTEGER NOT NULL,
    PRIMARY KEY (key_id, store_id)
);

-- Secrets the hub generates for itself (the webhook secret, the order code seal key).
CREATE TABLE IF NOT EXISTS hub_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Pickup orders. No code or token in plain text: code_sealed is the fallback code sealed with
-- the seal key, and the QR token is re-signed from the claims when needed (see pickup::token).
CREATE TABLE IF NOT EXISTS orders (
    order_id            TEXT PRIMARY KEY,
    store_id            TEXT NOT NULL REFERENCES stores (store_id),
    status              TEXT NOT NULL,
    request_sha256      TEXT NOT NULL,
    placed_at           INTEGER NOT NULL,
    pickup_by           INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    webhook_url         TEXT,
    key_id              INTEGER NOT NULL,
    code_digest         TEXT NOT NULL,
    code_sealed         TEXT NOT NULL,
    change_seq          INTEGER NOT NULL,
    location            TEXT,
    collected           TEXT,
    cancel_id           TEXT,
    cancel_requested_at INTEGER,
    cancel_reason       TEXT,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_store ON orders (store_id, placed_at);
CREATE INDEX IF NOT EXISTS orders_by_placed ON orders (placed_at);
CREATE INDEX IF NOT EXISTS orders_open_by_expiry ON orders (expires_at)
    WHERE status IN ('placed', 'sent_to_store', 'picking', 'ready');

CREATE TABLE IF NOT EXISTS order_lines (
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    line_no  INTEGER NOT NULL,
    gtin     TEXT NOT NULL,
    qty      INTEGER NOT NULL,
    name     TEXT NOT NULL,
    missing  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (order_id, line_no)
);

-- Every status transition, with its time and who made it (hq | store).
CREATE TABLE IF NOT EXISTS order_history (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    status   TEXT NOT NULL,
    at       INTEGER NOT NULL,
    source   TEXT NOT NULL,
    event_id TEXT,
    detail   TEXT
);
CREATE INDEX IF NOT EXISTS order_history_by_order ON order_history (order_id, id);

-- Races HQ should look at, each once (conflict_key names the race, e.g. the cancellation).
CREATE TABLE IF NOT EXISTS order_conflicts (
    conflict_key TEXT PRIMARY KEY,
    order_id     TEXT NOT NULL REFERENCES orders (order_id),
    kind         TEXT NOT NULL,
    at           INTEGER NOT NULL,
    event_id     TEXT,
    detail       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS order_conflicts_by_order ON order_conflicts (order_id, at);

-- Stock held by open orders: available = on hand (stock_deltas) - reserved.
CREATE TABLE IF NOT EXISTS stock_reservations (
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    line_no  INTEGER NOT NULL,
    store_id TEXT NOT NULL,
    gtin     TEXT NOT NULL,
    qty      INTEGER NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
CREATE INDEX IF NOT EXISTS reservations_by_gtin ON stock_reservations (store_id, gtin);

-- Pickup events from stores, one row per event id: the key of their side effects.
CREATE TABLE IF NOT EXISTS pickup_events (
    event_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    store_id TEXT NOT NULL,
    kind     TEXT NOT NULL,
    outcome  TEXT NOT NULL
);

-- The webhook outbox: exact bodies, delivered at least once by the webhook worker, in seq order
-- when due at the same time.
CREATE TABLE IF NOT EXISTS webhook_outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    order_id        TEXT NOT NULL,
    kind            TEXT NOT NULL,
    url             TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at    INTEGER,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS webhooks_by_order ON webhook_outbox (order_id, seq);

-- ---- security (schema 4): HQ API tokens, the audit log, enrolment, signed gateway requests ----

-- HQ API tokens: only SHA-256 of the (256-bit random) token is kept.
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id     TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('pricing', 'orders', 'admin')),
    token_sha256 BLOB NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);

-- Append-only and hash-chained: hash = sha256(previous hash || canonical content).
CREATE TABLE IF NOT EXISTS audit_log (
    seq     INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL,
    hash    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_action ON audit_log (action, subject, at);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

-- One-time enrolment codes: only SHA-256 of the code is kept.
CREATE TABLE IF NOT EXISTS enrolment_codes (
    code_id     TEXT PRIMARY KEY,
    code_sha256 BLOB NOT NULL UNIQUE,
    store_id    TEXT NOT NULL REFERENCES stores (store_id),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    gateway_id  TEXT
);

-- The public key of an enrolled gateway (its bearer secret is random and was never shown).
CREATE TABLE IF NOT EXISTS gateway_keys (
    gateway_id  TEXT PRIMARY KEY REFERENCES gateways (gateway_id),
    public_key  TEXT NOT NULL,
    name        TEXT NOT NULL,
    code_id     TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL
);

-- Nonces of signed requests, kept until their timestamp leaves the accepted window.
CREATE TABLE IF NOT EXISTS gateway_nonces (
    gateway_id TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, nonce)
);
CREATE INDEX IF NOT EXISTS gateway_nonces_expiry ON gateway_nonces (expires_at);

-- ---- shelf labels (schema 5) ----

-- Every price version the hub issued per (store, GTIN), kept after compaction: what a shelf
-- label should show, and from when.
CREATE TABLE IF NOT EXISTS price_versions (
    store_id     TEXT NOT NULL,
    gtin         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    batch_id     TEXT NOT NULL,
    effective_at INTEGER NOT NULL,
    PRIMARY KEY (store_id, gtin, version)
);
CREATE INDEX IF NOT EXISTS price_versions_by_batch ON price_versions (batch_id, store_id, gtin);

-- The labels each store bound (label_id is the tag's 32-bit address), and what each confirmed
-- it shows or reported it could not show (see labels.rs). An unbound label has no row.
CREATE TABLE IF NOT EXISTS shelf_labels (
    store_id            TEXT NOT NULL,
    label_id            INTEGER NOT NULL,
    gtin                TEXT NOT NULL,
    shelf               TEXT NOT NULL,
    bound_at            INTEGER NOT NULL,
    confirmed_version   INTEGER,
    confirmed_batch     TEXT,
    confirmed_at        INTEGER,
    not_updated_version INTEGER,
    not_updated_batch   TEXT,
    not_updated_at      INTEGER,
    not_updated_reason  TEXT,
    PRIMARY KEY (store_id, label_id)
);
CREATE INDEX IF NOT EXISTS shelf_labels_by_gtin ON shelf_labels (store_id, gtin);

-- Label events, one row per event id: the key of their side effects (a replayed event, even
-- under another gateway or seq, changes nothing). Payloads stay in `events`.
CREATE TABLE IF NOT EXISTS label_events (
    event_id TEXT PRIMARY KEY,
    store_id TEXT NOT NULL,
    label_id INTEGER NOT NULL,
    kind     TEXT NOT NULL
);
