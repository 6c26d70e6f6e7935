-- Scale-out: the worker registry and partition leases (docs/design.md §10).

-- Every running Tidemark process registers here and heartbeats. A worker whose heartbeat
-- is older than the configured timeout is considered dead.
CREATE TABLE workers (
    id            uuid PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    address       text,
    pool          text NOT NULL,
    version       text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz,
    -- Partitions worked at once, as last decided by the worker's adaptive limit.
    concurrency   integer NOT NULL DEFAULT 0
);
CREATE INDEX workers_pool_heartbeat ON workers (pool, heartbeat_at);

-- Who may process (projection, partition). A claim bumps the epoch; every checkpoint
-- commit checks owner and epoch, so a worker that lost its lease cannot commit (fencing).
CREATE TABLE projection_leases (
    projection  text     NOT NULL,
    partition   smallint NOT NULL,
    owner       uuid,
    epoch       bigint   NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (projection, partition)
);
CREATE INDEX projection_leases_owner ON projection_leases (owner);
