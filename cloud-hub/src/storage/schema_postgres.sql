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
