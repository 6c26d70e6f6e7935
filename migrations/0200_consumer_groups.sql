-- Consumer groups (persistent subscriptions): a named cursor over the log shared by many
-- consumers, with its in-flight deliveries and parked messages. Owned by the
-- tidemark-consumers crate (docs/consumer-groups.md).

-- One row per group: what it reads, how it hands events out, and how far it has read.
-- Every fetch and ack locks its group's row first, so processes serialize per group.
CREATE TABLE consumer_groups (
    name                 text PRIMARY KEY,
    -- The selector: stream categories and event types (empty: all).
    categories           text[] NOT NULL DEFAULT '{}',
    event_types          text[] NOT NULL DEFAULT '{}',
    -- How messages are shared among consumers (spelled in consumers/src/model.rs).
    strategy             text NOT NULL,
    max_in_flight        integer NOT NULL CHECK (max_in_flight > 0),
    ack_timeout_ms       bigint NOT NULL CHECK (ack_timeout_ms > 0),
    max_deliveries       integer NOT NULL CHECK (max_deliveries > 0),
    retry_backoff_ms     bigint NOT NULL CHECK (retry_backoff_ms >= 0),
    retry_backoff_max_ms bigint NOT NULL CHECK (retry_backoff_max_ms >= 0),
    -- The group reads the events after this position.
    start_after          bigint NOT NULL,
    -- Every matching event up to here has been taken into consumer_deliveries (and may
    -- since have been acked, skipped or parked); the next are read from the log after it.
    frontier             bigint NOT NULL,
    -- Single active consumer: who holds the group, until when (renewed by its fetches).
    active_consumer      text,
    active_until         timestamptz,
    delivered_total      bigint NOT NULL DEFAULT 0,
    redelivered_total    bigint NOT NULL DEFAULT 0,
    acked_total          bigint NOT NULL DEFAULT 0,
    skipped_total        bigint NOT NULL DEFAULT 0,
    parked_total         bigint NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now()
);

-- The group's outstanding messages: taken from the log and not yet acked, skipped or
-- parked. In flight while `deadline` is set (to `consumer`); otherwise waiting to be
-- handed out (after `not_before`, for a retry's backoff).
CREATE TABLE consumer_deliveries (
    group_name     text NOT NULL REFERENCES consumer_groups (name) ON DELETE CASCADE,
    position       bigint NOT NULL,
    event_id       uuid NOT NULL,
    stream_id      text NOT NULL,
    recorded_at    timestamptz NOT NULL,
    -- Who has it in flight, or who had it last.
    consumer       text,
    delivery_count integer NOT NULL DEFAULT 0,
    deadline       timestamptz,
    not_before     timestamptz,
    last_error     text,
    PRIMARY KEY (group_name, position)
);
CREATE INDEX consumer_deliveries_stream ON consumer_deliveries (group_name, stream_id, position);
CREATE INDEX consumer_deliveries_consumer ON consumer_deliveries (group_name, consumer) WHERE deadline IS NOT NULL;

-- Messages set aside: past max deliveries, or parked by a consumer's nack. Listed and
-- replayed by operators (as projections' dead letters are).
CREATE TABLE consumer_parked (
    group_name  text NOT NULL REFERENCES consumer_groups (name) ON DELETE CASCADE,
    position    bigint NOT NULL,
    event_id    uuid NOT NULL,
    stream_id   text NOT NULL,
    recorded_at timestamptz NOT NULL,
    consumer    text,
    deliveries  integer NOT NULL,
    reason      text NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, position)
);
