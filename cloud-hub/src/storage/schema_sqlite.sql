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
