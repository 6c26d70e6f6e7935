-- Projection bookkeeping: registered projections, checkpoints, rebuild progress,
-- parked (dead-letter) events and handler dedup. Read models themselves live in one
-- schema per projection, created by the projection's own `setup`.

CREATE TABLE projections (
    name             text PRIMARY KEY,
    -- Version of the code that built the live read model.
    version          integer NOT NULL,
    -- Schema holding the live read model.
    schema_name      text    NOT NULL,
    -- running | stopped (a partition stopped on a poison event)
    status           text    NOT NULL DEFAULT 'running',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per (projection, target, partition). Target 'live' is the serving read model;
-- rebuilds, replays and as-of builds use their own targets. Partition -1 is a lane that
-- reads every partition in log order (rebuilds).
CREATE TABLE projection_checkpoints (
    projection   text     NOT NULL,
    target       text     NOT NULL,
    partition    smallint NOT NULL,
    position     bigint   NOT NULL DEFAULT 0,
    events_per_second double precision NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, target, partition)
);

-- Progress of a rebuild, replay or as-of build, readable by the API while it runs.
CREATE TABLE projection_rebuilds (
    id            bigserial PRIMARY KEY,
    projection    text   NOT NULL,
    target        text   NOT NULL,
    kind          text   NOT NULL,  -- rebuild | replay | as_of
    from_position bigint NOT NULL,
    to_position   bigint,           -- as_of only
    events_done   bigint NOT NULL DEFAULT 0,
    events_total  bigint NOT NULL DEFAULT 0,
    position      bigint NOT NULL DEFAULT 0,
    rate          double precision NOT NULL DEFAULT 0,
    status        text   NOT NULL DEFAULT 'running', -- running | done | failed
    error         text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX projection_rebuilds_projection ON projection_rebuilds (projection, id DESC);

-- Events a projection could not apply after its retries.
CREATE TABLE projection_dead_letters (
    id          bigserial PRIMARY KEY,
    projection  text     NOT NULL,
    partition   smallint NOT NULL,
    position    bigint   NOT NULL,
    event_id    uuid     NOT NULL,
    error       text     NOT NULL,
    attempts    integer  NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    -- Set when the event was replayed successfully after a fix.
    replayed_at timestamptz,
    UNIQUE (projection, event_id)
);

-- Events a side-effect handler has completed, so a retried event is skipped.
CREATE TABLE handler_dedup (
    handler     text NOT NULL,
    event_id    uuid NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (handler, event_id)
);
