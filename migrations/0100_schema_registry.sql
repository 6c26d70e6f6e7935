-- The schema registry (docs/schema-evolution.md): per event type, numbered schema versions,
-- each a JSON Schema and optionally an Avro schema; a compatibility and a validation mode per
-- type; the server-wide defaults. A version's schema never changes and its number is never
-- reused; a version is deleted only while no stored event claims it.

CREATE TABLE schema_settings (
    singleton              boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    default_compatibility  text    NOT NULL DEFAULT 'BACKWARD' CHECK (default_compatibility IN
        ('BACKWARD', 'BACKWARD_TRANSITIVE', 'FORWARD', 'FORWARD_TRANSITIVE', 'FULL',
         'FULL_TRANSITIVE', 'NONE')),
    default_validation     text    NOT NULL DEFAULT 'OFF'
        CHECK (default_validation IN ('OFF', 'WARN', 'ENFORCE')),
    -- What appends of an event type without any schema get.
    unregistered_policy    text    NOT NULL DEFAULT 'ALLOW'
        CHECK (unregistered_policy IN ('ALLOW', 'REFUSE')),
    -- Advanced by every change to the registry, so that each process's cache can tell
    -- cheaply that another process changed something.
    generation             bigint  NOT NULL DEFAULT 0
);
INSERT INTO schema_settings DEFAULT VALUES;

CREATE TABLE schema_subjects (
    event_type     text    PRIMARY KEY,
    -- NULL: the server-wide default of schema_settings.
    compatibility  text    CHECK (compatibility IN
        ('BACKWARD', 'BACKWARD_TRANSITIVE', 'FORWARD', 'FORWARD_TRANSITIVE', 'FULL',
         'FULL_TRANSITIVE', 'NONE')),
    validation     text    CHECK (validation IN ('OFF', 'WARN', 'ENFORCE')),
    -- The number the next registered version gets (deleted numbers are not reused).
    next_version   integer NOT NULL DEFAULT 1 CHECK (next_version >= 1),
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE schema_versions (
    event_type      text    NOT NULL REFERENCES schema_subjects (event_type),
    version         integer NOT NULL CHECK (version >= 1),
    json_schema     jsonb   NOT NULL,
    -- The Avro schema for binary payloads of this version, if it has one.
    avro_schema     text,
    -- blake3 of the canonical JSON Schema and the Avro schema's canonical form: registering
    -- the same schema again finds this version.
    fingerprint     bytea   NOT NULL CHECK (octet_length(fingerprint) = 32),
    -- Declarative upcast from this version to the next (a JSON array of changes), if any.
    upcast_to_next  jsonb   CHECK (upcast_to_next IS NULL OR jsonb_typeof(upcast_to_next) = 'array'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_type, version),
    UNIQUE (event_type, fingerprint)
);

-- The log keeps every event as written, so a version that events claim stays, whoever
-- deletes it.
CREATE FUNCTION tidemark_schema_version_unused() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM events
               WHERE event_type = OLD.event_type AND schema_version = OLD.version) THEN
        RAISE EXCEPTION 'version % of % is used by stored events', OLD.version, OLD.event_type
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN OLD;
END;
$$;

CREATE TRIGGER schema_versions_in_use
    BEFORE DELETE ON schema_versions
    FOR EACH ROW EXECUTE FUNCTION tidemark_schema_version_unused();
