-- Operator actions are audited; key rotation links the new key to the one it replaces.

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    action      text NOT NULL,
    entity_type text NOT NULL CHECK (entity_type IN ('tenant', 'environment', 'api_key')),
    entity_id   text NOT NULL,
    -- JSON snapshots of the row; never a key or a hash
    before      jsonb,
    after       jsonb
);
CREATE INDEX audit_log_entity_idx ON audit_log (entity_type, entity_id, at);
CREATE INDEX audit_log_at_idx ON audit_log (at);

ALTER TABLE api_keys ADD COLUMN rotated_from uuid REFERENCES api_keys (id) ON DELETE RESTRICT;
CREATE INDEX api_keys_rotated_from_idx ON api_keys (rotated_from);
