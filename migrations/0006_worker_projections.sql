-- Which projections each worker runs, and enough about its process for a worker on the same
-- machine to tell that it has died (issue 9, items 4 and 5).

-- The projections whose live lanes the worker runs now (refreshed at every heartbeat). A
-- projection's partitions are shared only among live workers that list it, so workers with
-- different sets of projections on one database (two applications, a rolling deploy) do not
-- leave each other's partitions unowned. Workers from before this migration list none: they
-- are not counted in any share, so the others take everything left free.
ALTER TABLE workers
    ADD COLUMN projections     text[] NOT NULL DEFAULT '{}',
    -- Where `pid` means something: the kernel's boot id and the pid namespace. NULL when
    -- the platform does not tell; such a worker is only ever found dead by its heartbeat.
    ADD COLUMN process_scope   text,
    -- The process's start time (clock ticks since boot), so a reused pid is not mistaken
    -- for the worker.
    ADD COLUMN process_started bigint;
CREATE INDEX workers_host ON workers (host) WHERE stopped_at IS NULL;
