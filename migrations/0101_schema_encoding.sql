-- Per event type, the encoding its payloads are stored in when an append does not ask for
-- one (docs/schema-evolution.md, "Binary payloads"): NULL or 'JSON' stores JSON, 'AVRO' an
-- Avro datum of the event's schema version, so every writer gets compact storage without
-- changing clients.
ALTER TABLE schema_subjects ADD COLUMN encoding text CHECK (encoding IN ('JSON', 'AVRO'));
