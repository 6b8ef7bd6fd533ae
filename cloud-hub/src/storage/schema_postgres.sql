-- aisle-hub schema for PostgreSQL. Idempotent: run on every open, under an advisory lock so
-- several hubs starting at once do not race. Times are UTC milliseconds.
CREATE TABLE IF NOT EXISTS schema_version (
    version BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS stores (
    store_id   TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    currency   TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS gateways (
    gateway_id     TEXT PRIMARY KEY,
    store_id       TEXT NOT NULL REFERENCES stores (store_id),
    secret_sha256  BYTEA NOT NULL,
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    acked_through  BIGINT NOT NULL DEFAULT 0,
    last_upload_at BIGINT
);

-- The current price of each product at each store; version rises by one per batch.
CREATE TABLE IF NOT EXISTS prices (
    store_id     TEXT NOT NULL REFERENCES stores (store_id),
    gtin         TEXT NOT NULL,
    version      BIGINT NOT NULL,
    price_minor  BIGINT NOT NULL,
    currency     TEXT NOT NULL,
    name         TEXT NOT NULL,
    batch_id     TEXT NOT NULL,
    effective_at BIGINT NOT NULL,
    PRIMARY KEY (store_id, gtin)
);

CREATE TABLE IF NOT EXISTS price_batches (
    batch_id     TEXT PRIMARY KEY,
    created_at   BIGINT NOT NULL,
    effective_at BIGINT NOT NULL,
    items        BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS price_batch_stores (
    batch_id TEXT NOT NULL REFERENCES price_batches (batch_id),
    store_id TEXT NOT NULL REFERENCES stores (store_id),
    items    BIGINT NOT NULL,
    PRIMARY KEY (batch_id, store_id)
);

-- The changefeed. Writers serialise on an advisory lock (see postgres.rs), so seqs commit in order.
CREATE TABLE IF NOT EXISTS changes (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    store_id   TEXT NOT NULL,
    kind       TEXT NOT NULL,
    gtin       TEXT,
    version    BIGINT,
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_store ON changes (store_id, seq);

-- Every uploaded ledger event, under UNIQUE (gateway, seq).
CREATE TABLE IF NOT EXISTS events (
    gateway_id  TEXT NOT NULL REFERENCES gateways (gateway_id),
    seq         BIGINT NOT NULL,
    event_id    TEXT NOT NULL,
    store_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    hlc_wall    BIGINT NOT NULL,
    hlc_counter BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    payload     TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, seq)
);

CREATE TABLE IF NOT EXISTS sales (
    hub_seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    TEXT NOT NULL UNIQUE,
    store_id    TEXT NOT NULL,
    gateway_id  TEXT NOT NULL,
    sale_id     TEXT NOT NULL,
    sold_at     BIGINT NOT NULL,
    total_minor BIGINT NOT NULL,
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
    delta      BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS stock_by_gtin ON stock_deltas (store_id, gtin);

CREATE TABLE IF NOT EXISTS stock_adjustments (
    adjustment_id TEXT PRIMARY KEY,
    store_id      TEXT NOT NULL REFERENCES stores (store_id),
    gtin          TEXT NOT NULL,
    delta         BIGINT NOT NULL,
    reason        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    change_seq    BIGINT NOT NULL
);

-- PriceStaged / PriceActivated events, one row per event id.
CREATE TABLE IF NOT EXISTS batch_progress (
    event_id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    store_id TEXT NOT NULL,
    gtin     TEXT NOT NULL,
    version  BIGINT NOT NULL,
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
    start_ms        BIGINT NOT NULL,
    entered         BIGINT NOT NULL,
    exited          BIGINT NOT NULL,
    occupancy       BIGINT,
    cameras_missing TEXT,
    at              BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS footfall_by_store ON footfall (store_id, start_ms);

-- ---- Click-and-collect (schema version 3) ----

-- The hub's Ed25519 pickup signing keys (32-byte seeds). Generated on first use; the public key
-- goes to every store as a `pickup_key` change.
CREATE TABLE IF NOT EXISTS pickup_keys (
    key_id     BIGINT PRIMARY KEY,
    seed       BYTEA NOT NULL,
    public_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Which store's changefeed carries which key: each key once per store.
CREATE TABLE IF NOT EXISTS pickup_key_stores (
    key_id     BIGINT NOT NULL,
    store_id   TEXT NOT NULL,
    change_seq BIGINT NOT NULL,
    PRIMARY KEY (key_id, store_id)
);

-- Secrets the hub generates for itself (the webhook secret, the order code seal key).
CREATE TABLE IF NOT EXISTS hub_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Pickup orders. No code or token in plain text: code_sealed is the fallback code sealed with
-- the seal key, and the QR token is re-signed from the claims when needed (see pickup::token).
CREATE TABLE IF NOT EXISTS orders (
    order_id            TEXT PRIMARY KEY,
    store_id            TEXT NOT NULL REFERENCES stores (store_id),
    status              TEXT NOT NULL,
    request_sha256      TEXT NOT NULL,
    placed_at           BIGINT NOT NULL,
    pickup_by           BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    webhook_url         TEXT,
    key_id              BIGINT NOT NULL,
    code_digest         TEXT NOT NULL,
    code_sealed         TEXT NOT NULL,
    change_seq          BIGINT NOT NULL,
    location            TEXT,
    collected           TEXT,
    cancel_id           TEXT,
    cancel_requested_at BIGINT,
    cancel_reason       TEXT,
    updated_at          BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_store ON orders (store_id, placed_at);
CREATE INDEX IF NOT EXISTS orders_by_placed ON orders (placed_at);
CREATE INDEX IF NOT EXISTS orders_open_by_expiry ON orders (expires_at)
    WHERE status IN ('placed', 'sent_to_store', 'picking', 'ready');

CREATE TABLE IF NOT EXISTS order_lines (
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    line_no  BIGINT NOT NULL,
    gtin     TEXT NOT NULL,
    qty      BIGINT NOT NULL,
    name     TEXT NOT NULL,
    missing  BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (order_id, line_no)
);

-- Every status transition, with its time and who made it (hq | store).
CREATE TABLE IF NOT EXISTS order_history (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    status   TEXT NOT NULL,
    at       BIGINT NOT NULL,
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
    at           BIGINT NOT NULL,
    event_id     TEXT,
    detail       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS order_conflicts_by_order ON order_conflicts (order_id, at);

-- Stock held by open orders: available = on hand (stock_deltas) - reserved.
CREATE TABLE IF NOT EXISTS stock_reservations (
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    line_no  BIGINT NOT NULL,
    store_id TEXT NOT NULL,
    gtin     TEXT NOT NULL,
    qty      BIGINT NOT NULL,
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
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    order_id        TEXT NOT NULL,
    kind            TEXT NOT NULL,
    url             TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    delivered_at    BIGINT,
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
    token_sha256 BYTEA NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);

-- Append-only and hash-chained: hash = sha256(previous hash || canonical content). Writers
-- take AUDIT_LOCK, read the head and append, as the last step of their transaction.
CREATE TABLE IF NOT EXISTS audit_log (
    seq     BIGINT PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL,
    hash    BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_action ON audit_log (action, subject, at);
CREATE OR REPLACE FUNCTION aisle_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION aisle_audit_append_only();
CREATE OR REPLACE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION aisle_audit_append_only();

-- One-time enrolment codes: only SHA-256 of the code is kept.
CREATE TABLE IF NOT EXISTS enrolment_codes (
    code_id     TEXT PRIMARY KEY,
    code_sha256 BYTEA NOT NULL UNIQUE,
    store_id    TEXT NOT NULL REFERENCES stores (store_id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    gateway_id  TEXT
);

-- The public key of an enrolled gateway (its bearer secret is random and was never shown).
CREATE TABLE IF NOT EXISTS gateway_keys (
    gateway_id  TEXT PRIMARY KEY REFERENCES gateways (gateway_id),
    public_key  TEXT NOT NULL,
    name        TEXT NOT NULL,
    code_id     TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL
);

-- Nonces of signed requests, kept until their timestamp leaves the accepted window.
CREATE TABLE IF NOT EXISTS gateway_nonces (
    gateway_id TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, nonce)
);
CREATE INDEX IF NOT EXISTS gateway_nonces_expiry ON gateway_nonces (expires_at);

-- ---- shelf labels (schema 5) ----

-- Every price version the hub issued per (store, GTIN), kept after compaction: what a shelf
-- label should show, and from when.
CREATE TABLE IF NOT EXISTS price_versions (
    store_id     TEXT NOT NULL,
    gtin         TEXT NOT NULL,
    version      BIGINT NOT NULL,
    batch_id     TEXT NOT NULL,
    effective_at BIGINT NOT NULL,
    PRIMARY KEY (store_id, gtin, version)
);
CREATE INDEX IF NOT EXISTS price_versions_by_batch ON price_versions (batch_id, store_id, gtin);

-- The labels each store bound (label_id is the tag's 32-bit address), and what each confirmed
-- it shows or reported it could not show (see labels.rs). An unbound label has no row.
CREATE TABLE IF NOT EXISTS shelf_labels (
    store_id            TEXT NOT NULL,
    label_id            BIGINT NOT NULL,
    gtin                TEXT NOT NULL,
    shelf               TEXT NOT NULL,
    bound_at            BIGINT NOT NULL,
    confirmed_version   BIGINT,
    confirmed_batch     TEXT,
    confirmed_at        BIGINT,
    not_updated_version BIGINT,
    not_updated_batch   TEXT,
    not_updated_at      BIGINT,
    not_updated_reason  TEXT,
    PRIMARY KEY (store_id, label_id)
);
CREATE INDEX IF NOT EXISTS shelf_labels_by_gtin ON shelf_labels (store_id, gtin);

-- Label events, one row per event id: the key of their side effects (a replayed event, even
-- under another gateway or seq, changes nothing). Payloads stay in `events`.
CREATE TABLE IF NOT EXISTS label_events (
    event_id TEXT PRIMARY KEY,
    store_id TEXT NOT NULL,
    label_id BIGINT NOT NULL,
    kind     TEXT NOT NULL
);
