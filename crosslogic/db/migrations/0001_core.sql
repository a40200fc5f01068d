-- Core tables of the control plane. Money is NUMERIC (never float); token counts are BIGINT
-- where they are summed. Every foreign key has an index on the referencing side.

CREATE TABLE tenants (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name               text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    plan               text NOT NULL DEFAULT 'default',
    stripe_customer_id text UNIQUE,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE environments (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    name       text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    -- target of the composite key below: a key's environment must belong to the key's tenant
    UNIQUE (id, tenant_id)
);

CREATE TABLE regions (
    code             text PRIMARY KEY CHECK (code ~ '^[a-z0-9-]{1,64}$'),
    name             text NOT NULL,
    provider         text NOT NULL,
    price_multiplier numeric(8, 4) NOT NULL DEFAULT 1 CHECK (price_multiplier > 0),
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE models (
    id                    integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                  text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    family                text NOT NULL DEFAULT '',
    context_length        integer NOT NULL DEFAULT 8192 CHECK (context_length > 0),
    -- USD per million tokens
    input_price_per_mtok  numeric(12, 6) NOT NULL DEFAULT 0 CHECK (input_price_per_mtok >= 0),
    output_price_per_mtok numeric(12, 6) NOT NULL DEFAULT 0 CHECK (output_price_per_mtok >= 0),
    status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deprecated')),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- short public identifier shown in lists and logs; the secret is never stored
    key_id         text NOT NULL UNIQUE CHECK (key_id ~ '^[A-Za-z0-9_]{4,64}$'),
    key_hash       bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),  -- SHA-256
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    environment_id uuid NOT NULL,
    name           text NOT NULL DEFAULT '',
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    allowed_models text[],            -- NULL: every model
    allowed_regions text[],           -- NULL: every region
    rate_limit_rpm integer CHECK (rate_limit_rpm > 0),  -- NULL: the service default
    expires_at     timestamptz,
    revoked_at     timestamptz,
    last_used_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (environment_id, tenant_id) REFERENCES environments (id, tenant_id)
        ON DELETE RESTRICT,
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);
CREATE INDEX api_keys_environment_idx ON api_keys (environment_id, tenant_id);

CREATE TABLE nodes (
    id                  text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.-]{1,128}$'),
    model_id            integer NOT NULL REFERENCES models (id) ON DELETE RESTRICT,
    address             text NOT NULL CHECK (length(address) BETWEEN 1 AND 253),
    port                integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    provider            text NOT NULL DEFAULT 'local',
    region_code         text NOT NULL REFERENCES regions (code) ON DELETE RESTRICT,
    gpu_type            text NOT NULL DEFAULT '',
    status              text NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'draining', 'dead')),
    requests_running    integer NOT NULL DEFAULT 0 CHECK (requests_running >= 0),
    requests_waiting    integer NOT NULL DEFAULT 0 CHECK (requests_waiting >= 0),
    kv_cache_usage_perc real NOT NULL DEFAULT 0 CHECK (kv_cache_usage_perc BETWEEN 0 AND 1),
    registered_at       timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX nodes_model_status_idx ON nodes (model_id, status);
CREATE INDEX nodes_region_idx ON nodes (region_code);
-- one live node per address: a restarted node re-registers and replaces its old row
CREATE UNIQUE INDEX nodes_live_address_idx ON nodes (address, port) WHERE status <> 'dead';

CREATE TABLE usage_records (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Envoy's x-request-id: the idempotency key, so a replayed access log never double-bills
    request_id        text NOT NULL UNIQUE,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    environment_id    uuid NOT NULL REFERENCES environments (id) ON DELETE RESTRICT,
    api_key_id        uuid NOT NULL REFERENCES api_keys (id) ON DELETE RESTRICT,
    model_id          integer NOT NULL REFERENCES models (id) ON DELETE RESTRICT,
    node_id           text,              -- no FK: usage outlives the node that served it
    endpoint          text NOT NULL,
    streamed          boolean NOT NULL DEFAULT false,
    prompt_tokens     integer NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens integer NOT NULL CHECK (completion_tokens >= 0),
    total_tokens      integer GENERATED ALWAYS AS (prompt_tokens + completion_tokens) STORED,
    cost_usd          numeric(20, 10) NOT NULL CHECK (cost_usd >= 0),
    status_code       integer NOT NULL,
    response_flags    text NOT NULL DEFAULT '',
    started_at        timestamptz NOT NULL,
    duration_ms       integer NOT NULL CHECK (duration_ms >= 0),
    recorded_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_records_tenant_time_idx ON usage_records (tenant_id, started_at);
CREATE INDEX usage_records_environment_idx ON usage_records (environment_id);
CREATE INDEX usage_records_key_time_idx ON usage_records (api_key_id, started_at);
CREATE INDEX usage_records_model_idx ON usage_records (model_id);
CREATE INDEX usage_records_started_brin ON usage_records USING brin (started_at);

CREATE TABLE usage_hourly (
    hour              timestamptz NOT NULL CHECK (hour = date_trunc('hour', hour)),
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    environment_id    uuid NOT NULL REFERENCES environments (id) ON DELETE RESTRICT,
    model_id          integer NOT NULL REFERENCES models (id) ON DELETE RESTRICT,
    request_count     bigint NOT NULL CHECK (request_count >= 0),
    prompt_tokens     bigint NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens bigint NOT NULL CHECK (completion_tokens >= 0),
    cost_usd          numeric(24, 10) NOT NULL CHECK (cost_usd >= 0),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, environment_id, model_id, hour)
);
CREATE INDEX usage_hourly_hour_idx ON usage_hourly (hour);
CREATE INDEX usage_hourly_environment_idx ON usage_hourly (environment_id);
CREATE INDEX usage_hourly_model_idx ON usage_hourly (model_id);

CREATE TABLE billing_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    hour            timestamptz NOT NULL CHECK (hour = date_trunc('hour', hour)),
    model_id        integer NOT NULL REFERENCES models (id) ON DELETE RESTRICT,
    meter           text NOT NULL CHECK (meter IN ('prompt_tokens', 'completion_tokens')),
    quantity        bigint NOT NULL CHECK (quantity >= 0),
    amount_usd      numeric(24, 10) NOT NULL CHECK (amount_usd >= 0),
    -- sent as Stripe's Idempotency-Key and event identifier: retries never double-bill
    idempotency_key text NOT NULL UNIQUE,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    stripe_event_id text,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    UNIQUE (tenant_id, hour, model_id, meter)
);
CREATE INDEX billing_events_pending_idx ON billing_events (created_at) WHERE status <> 'sent';
CREATE INDEX billing_events_model_idx ON billing_events (model_id);

-- How far the billing consumer has read each access log file: read, insert, then advance,
-- all in one transaction, so a crash replays (deduplicated by request_id) instead of losing.
CREATE TABLE access_log_offsets (
    path       text PRIMARY KEY,
    inode      bigint NOT NULL,
    "offset"   bigint NOT NULL CHECK ("offset" >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO regions (code, name, provider) VALUES ('local', 'Local machine', 'local');
