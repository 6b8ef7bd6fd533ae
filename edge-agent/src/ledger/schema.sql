-- The store's ledger. `events` is the append-only, hash-chained truth; every other table except
-- sync_state is materialised from it (ledger/state.rs) in the same transaction as its event, and
-- `aisle-agent ledger verify` rebuilds them from the events to prove it.

CREATE TABLE IF NOT EXISTS events (
    seq       INTEGER PRIMARY KEY,            -- 1, 2, 3, ... without gaps
    event_id  BLOB    NOT NULL UNIQUE,        -- 16 bytes, time-ordered (EventId::time_ordered)
    hlc       BLOB    NOT NULL,               -- 8-byte wall_ms + 4-byte counter, big-endian
    at        INTEGER NOT NULL,               -- hub-corrected UTC ms
    kind      TEXT    NOT NULL,               -- EventBody::kind()
    payload   BLOB    NOT NULL,               -- the event body as JSON, exactly as hashed
    prev_hash BLOB    NOT NULL,
    hash      BLOB    NOT NULL
);

CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;

-- One row per (gtin, version) still relevant: the active one, and pending ones of higher version.
CREATE TABLE IF NOT EXISTS prices (
    gtin         TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    price_minor  INTEGER NOT NULL,
    currency     TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    batch_id     TEXT    NOT NULL,
    effective_at INTEGER NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('pending', 'active')),
    active_since INTEGER,                     -- `at` of the PriceActivated event
    staged_seq   INTEGER NOT NULL,
    PRIMARY KEY (gtin, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS prices_pending ON prices (state, effective_at);

CREATE TABLE IF NOT EXISTS stock (
    gtin    TEXT    PRIMARY KEY,
    on_hand INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS sales (
    sale_id     TEXT    PRIMARY KEY,
    seq         INTEGER NOT NULL,             -- the SaleCommitted event (events.seq is its key)
    at          INTEGER NOT NULL,
    total_minor INTEGER NOT NULL,
    currency    TEXT    NOT NULL
) WITHOUT ROWID;

-- Card payments a terminal approved offline (store-and-forward), by sale: until the hub holds
-- the sale (seq at or below the outbox's acked_through) they count against the offline caps.
CREATE TABLE IF NOT EXISTS offline_payments (
    sale_id      TEXT    PRIMARY KEY,
    seq          INTEGER NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency     TEXT    NOT NULL
) WITHOUT ROWID;

-- Hub stock adjustments already applied, so a changefeed replay never applies one twice.
CREATE TABLE IF NOT EXISTS stock_adjustments (
    adjustment_id TEXT    PRIMARY KEY,
    seq           INTEGER NOT NULL,
    gtin          TEXT    NOT NULL,
    delta         INTEGER NOT NULL
) WITHOUT ROWID;

-- People counted per entrance zone and 15-minute interval, from FootfallCounted events. Events
-- for one (zone, start) are additive (a late reading is emitted again as another event), so a row
-- is their sum; `events` says how many.
CREATE TABLE IF NOT EXISTS footfall (
    zone            TEXT    NOT NULL,
    start_ms        INTEGER NOT NULL,
    end_ms          INTEGER NOT NULL,
    entered         INTEGER NOT NULL,
    exited          INTEGER NOT NULL,
    occupancy       INTEGER,                  -- from the latest event that reported one
    cameras_missing TEXT    NOT NULL,         -- JSON array, sorted and distinct, over all events
    events          INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    PRIMARY KEY (zone, start_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS footfall_start ON footfall (start_ms);

-- Camera ingestion bookkeeping (not derived from events): the counter and presence snapshot as
-- JSON, written in the same transaction as the FootfallCounted events it produced, so a restart
-- neither loses nor repeats an interval and recognises re-delivered messages.
CREATE TABLE IF NOT EXISTS footfall_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    snapshot   BLOB    NOT NULL,
    updated_at INTEGER NOT NULL                -- hub-corrected UTC ms of the write
);

-- Sync bookkeeping (not derived from events): one row.
CREATE TABLE IF NOT EXISTS sync_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    cursor        INTEGER NOT NULL DEFAULT 0, -- changefeed position, stored with the changes it covers
    acked_through INTEGER NOT NULL DEFAULT 0, -- outbox = events with seq > acked_through
    last_contact  INTEGER,                    -- local ms of the last answer from the hub
    skew_ms       INTEGER NOT NULL DEFAULT 0, -- hub time - local time
    hlc           BLOB                        -- last HLC issued or observed
);
INSERT OR IGNORE INTO sync_state (id) VALUES (1);

-- Click-and-collect. The hub's public keys for QR tokens (bookkeeping from the changefeed, no
-- event: a key is not something that happened at the store).
CREATE TABLE IF NOT EXISTS pickup_keys (
    key_id     INTEGER PRIMARY KEY,
    public_key TEXT    NOT NULL              -- Ed25519, 64 lowercase hex digits
);

-- One row per order the store holds, from the pickup events (ledger/pickup_state.rs).
CREATE TABLE IF NOT EXISTS pickup_orders (
    order_id         TEXT    PRIMARY KEY,
    status           TEXT    NOT NULL CHECK (status IN ('received', 'picking', 'ready', 'collected',
                                         'partially_collected', 'cancelled', 'expired')),
    placed_at        INTEGER NOT NULL,
    pickup_by        INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,        -- hub time; the sweeper expires open orders here
    code_digest      TEXT    NOT NULL,        -- code_digest(store, fallback code); never the code
    key_id           INTEGER NOT NULL,
    lines            TEXT    NOT NULL,        -- JSON [{gtin, qty, name, missing}]
    location         TEXT,                    -- where it waits (last PickupReady)
    picking_by       TEXT,
    ready_by         TEXT,
    collected_at     INTEGER,                 -- `at` of the PickupCollected event
    collected_device TEXT,
    collected_staff  TEXT,
    collected_method TEXT,                    -- 'qr' | 'code'
    partial          INTEGER NOT NULL DEFAULT 0,
    received_seq     INTEGER NOT NULL,
    last_seq         INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pickup_orders_code ON pickup_orders (code_digest);
CREATE INDEX IF NOT EXISTS pickup_orders_status ON pickup_orders (status, expires_at);

-- What happened to each order, one row per pickup event.
CREATE TABLE IF NOT EXISTS pickup_history (
    order_id TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    kind     TEXT    NOT NULL,                -- received | picking | ready | collected | cancelled
                                              -- | cancel_conflict | expired
    by       TEXT,
    PRIMARY KEY (order_id, seq)
) WITHOUT ROWID;

-- HQ cancellations already answered (applied or in conflict), so a replay answers none twice.
CREATE TABLE IF NOT EXISTS pickup_cancels (
    cancel_id TEXT    PRIMARY KEY,
    order_id  TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    outcome   TEXT    NOT NULL CHECK (outcome IN ('applied', 'conflict'))
) WITHOUT ROWID;

-- Shelf labels (ledger/labels.rs), from the label_* events. A label is bound to one product at
-- one shelf position; its panel comes from the technician (or the import) with the binding.
CREATE TABLE IF NOT EXISTS label_bindings (
    label    INTEGER PRIMARY KEY,             -- the tag's address (printed as 8 hex digits)
    gtin     TEXT    NOT NULL,
    shelf    TEXT    NOT NULL,
    panel    TEXT    NOT NULL,                -- bw290 | bwr290 | bw420 | bwr420
    bound_at INTEGER NOT NULL,
    bound_by TEXT,
    seq      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS label_bindings_gtin ON label_bindings (gtin);

-- What each label last confirmed it shows (content hash reported by the tag, displayed): the
-- price a shopper reads on the shelf. Lanes charge at most the lowest of these per GTIN.
CREATE TABLE IF NOT EXISTS label_shown (
    label        INTEGER PRIMARY KEY,
    gtin         TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    batch_id     TEXT    NOT NULL,
    price_minor  INTEGER NOT NULL,
    currency     TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    panel        TEXT    NOT NULL,
    layer        TEXT    NOT NULL,             -- LayerHash, 16 hex digits
    content      TEXT    NOT NULL,             -- ContentHash, 16 hex digits
    fields       TEXT    NOT NULL,             -- DynamicFields as JSON
    confirmed_at INTEGER NOT NULL,
    seq          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS label_shown_gtin ON label_shown (gtin, price_minor);

-- "Label not updated": the price version a label did not confirm before the deadline. Cleared
-- by a later confirmation of that version or a newer one.
CREATE TABLE IF NOT EXISTS label_not_updated (
    label    INTEGER PRIMARY KEY,
    gtin     TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    batch_id TEXT    NOT NULL,
    reason   TEXT    NOT NULL,
    at       INTEGER NOT NULL,
    seq      INTEGER NOT NULL
);
