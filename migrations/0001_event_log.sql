-- The event log: the only table Tidemark appends to and never changes.
-- Positions are dense and in commit order because every append transaction takes
-- them from the single `store_head` row (see docs/design.md §3).

CREATE TABLE store_head (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Last assigned global position; 0 means the log is empty.
    position    bigint  NOT NULL DEFAULT 0,
    -- Number of partitions, fixed when the store is created.
    partitions  integer NOT NULL CHECK (partitions BETWEEN 1 AND 32767),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE streams (
    stream_id   text   PRIMARY KEY,
    -- Version of the last event in the stream (0-based).
    version     bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    position        bigint      PRIMARY KEY,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    partition       smallint    NOT NULL,
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL DEFAULT 1,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    content_hash    bytea       NOT NULL CHECK (octet_length(content_hash) = 32),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- Category as in Message DB: the stream id up to the first '-'.
    category        text        GENERATED ALWAYS AS (split_part(stream_id, '-', 1)) STORED,
    UNIQUE (stream_id, stream_version)
);

CREATE INDEX events_partition_position ON events (partition, position);
CREATE INDEX events_category_position  ON events (category, position);
CREATE INDEX events_type_position      ON events (event_type, position);
CREATE INDEX events_stream_hash        ON events (stream_id, content_hash);

CREATE FUNCTION tidemark_reject_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION tidemark_reject_event_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION tidemark_reject_event_change();
