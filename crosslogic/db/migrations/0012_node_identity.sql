-- Node identity, metadata and lifecycle.
--
-- Nodes register with a registration token (created and revoked by operators, stored as the
-- SHA-256 of the token like API keys, optionally scoped to one provider and/or region) and
-- receive a per-node credential, whose hash is kept on the node's row: it heartbeats, drains
-- and deregisters that node only. The admin token is never given to a node.
CREATE TABLE node_registration_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    token_hash  bytea NOT NULL UNIQUE,
    -- the token's first characters, to recognise it in a list (never enough to use it)
    prefix      text NOT NULL,
    provider    text,  -- NULL: any provider
    region_code text REFERENCES regions (code) ON DELETE RESTRICT,  -- NULL: any region
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    last_used_at timestamptz
);

-- Metadata as the seed lists it, and the lifecycle: 'draining' (no new requests, in-flight
-- ones complete) ends in 'removed' (by an operator, or a drain that finished or timed out),
-- which a heartbeat never undoes; 'dead' (deregistered, replaced, or silent too long) comes
-- back when the node registers again.
ALTER TABLE nodes
    ADD COLUMN zone text NOT NULL DEFAULT '' CHECK (length(zone) <= 100),
    ADD COLUMN gpu_count integer NOT NULL DEFAULT 1 CHECK (gpu_count BETWEEN 0 AND 1024),
    ADD COLUMN capacity integer NOT NULL DEFAULT 256 CHECK (capacity BETWEEN 1 AND 1000000),
    ADD COLUMN spot boolean NOT NULL DEFAULT false,
    ADD COLUMN credential_hash bytea,
    ADD COLUMN registration_token_id uuid
        REFERENCES node_registration_tokens (id) ON DELETE SET NULL,
    ADD COLUMN drain_started_at timestamptz,
    ADD COLUMN removed_at timestamptz;
ALTER TABLE nodes DROP CONSTRAINT nodes_status_check;
ALTER TABLE nodes ADD CONSTRAINT nodes_status_check
    CHECK (status IN ('active', 'draining', 'removed', 'dead'));
-- one live node per address: a removed row no more holds its address than a dead one
DROP INDEX nodes_live_address_idx;
CREATE UNIQUE INDEX nodes_live_address_idx ON nodes (address, port)
    WHERE status IN ('active', 'draining');

SELECT allow_audit_entities('node', 'node_token');
