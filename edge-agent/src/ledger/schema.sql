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
