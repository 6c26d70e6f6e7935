-- API keys of the GraphQL API. Only a blake3 hash of each key is stored; the key itself is
-- shown once, when `tidemark keys create` makes it. Revoked keys stay for the audit trail.

CREATE TABLE api_keys (
    -- Public identifier, printed by `tidemark keys list` and used to revoke.
    id            text PRIMARY KEY,
    name          text NOT NULL,
    role          text NOT NULL CHECK (role IN ('read', 'append', 'admin')),
    key_hash      bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
