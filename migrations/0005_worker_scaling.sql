-- Each worker publishes the scaling signal it computed for its pool, so any process (the
-- CLI, the API of another node) can report `desired_workers` per pool.
ALTER TABLE workers
    ADD COLUMN desired_workers integer NOT NULL DEFAULT 1,
    ADD COLUMN lag_events      bigint  NOT NULL DEFAULT 0;
