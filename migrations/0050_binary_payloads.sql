-- Binary payloads (docs/schema-evolution.md, "Binary payloads"): an event's payload is stored
-- either as JSON in `payload` or as an Avro datum of its registered schema version in
-- `payload_avro`, never both. The content hash stays the hash of the JSON payload, whatever
-- the encoding. Neither change rewrites a row: a nullable column without a default is added
-- in the catalog only, and dropping NOT NULL needs no check.
ALTER TABLE events ALTER COLUMN payload DROP NOT NULL;
ALTER TABLE events ADD COLUMN payload_avro bytea;
-- Every existing row holds JSON (payload was NOT NULL until now), so the constraint is not
-- checked against them: no scan of a large log while the table is locked. New rows are.
ALTER TABLE events ADD CONSTRAINT events_one_payload
    CHECK ((payload IS NULL) <> (payload_avro IS NULL)) NOT VALID;
