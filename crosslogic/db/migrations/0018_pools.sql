-- GPU pools (issue 14): what capacity an operator wants per model (declared through the
-- admin API or `crosslogic pools ...`, audited as entity 'pool'), and what the orchestrator
-- launched through SkyPilot to provide it. The orchestrator keeps all of its state here, so
-- a restarted or second orchestrator knows what exists: a launch's row, with its
-- deterministic cluster name, is written BEFORE SkyPilot is asked to launch it.
CREATE TABLE pools (
    name                      text PRIMARY KEY CHECK (name ~ '^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$'),
    model_id                  integer NOT NULL REFERENCES models (id) ON DELETE RESTRICT,
    -- the CrossLogic region its nodes register in (reserved capacity is sold per region);
    -- NULL: the nodes of its model in any region
    region_code               text REFERENCES regions (code) ON DELETE RESTRICT,
    accelerator               text NOT NULL CHECK (accelerator ~ '^[A-Za-z0-9_.-]{1,64}$'),
    gpu_count                 integer NOT NULL CHECK (gpu_count BETWEEN 1 AND 16),
    clouds                    text[],  -- NULL: any cloud `sky check` enabled
    cloud_regions             text[],  -- NULL: any region of those clouds
    min_replicas              integer NOT NULL CHECK (min_replicas BETWEEN 0 AND 100),
    max_replicas              integer NOT NULL CHECK (max_replicas BETWEEN 0 AND 100),
    spot                      boolean NOT NULL DEFAULT false,
    on_demand_fallback        boolean NOT NULL DEFAULT true,
    model_source              text NOT NULL DEFAULT '',  -- what vLLM loads ('': the model's name)
    vllm_args                 text[] NOT NULL DEFAULT '{}',
    -- tokens per minute one replica serves: turns reserved capacity into replicas
    replica_tokens_per_minute bigint NOT NULL CHECK (replica_tokens_per_minute > 0),
    scale_up_cooldown_s       integer NOT NULL DEFAULT 120 CHECK (scale_up_cooldown_s >= 0),
    scale_down_cooldown_s     integer NOT NULL DEFAULT 600 CHECK (scale_down_cooldown_s >= 0),
    created_by                text NOT NULL,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    -- the orchestrator's view (never written by operators): the replicas it aims at, when
    -- it last scaled, SkyPilot's optimizer's choice and cost for one replica
    target_replicas           integer CHECK (target_replicas >= 0),
    last_scaled_at            timestamptz,
    estimate                  jsonb,
    observed_at               timestamptz,
    CHECK (min_replicas <= max_replicas)
);
CREATE INDEX pools_model_idx ON pools (model_id);
CREATE INDEX pools_region_idx ON pools (region_code);

-- One SkyPilot cluster launched for a pool (one replica). pool_name has no foreign key: a
-- deleted pool's launches stay until they are torn down. spec_hash is the pool's spec at
-- launch: a launch of an older spec is replaced.
CREATE TABLE pool_launches (
    id               bigint PRIMARY KEY,
    pool_name        text NOT NULL,
    cluster_name     text NOT NULL UNIQUE,
    spec_hash        text NOT NULL,
    state            text NOT NULL DEFAULT 'launching'
                     CHECK (state IN ('launching', 'up', 'terminating', 'terminated', 'failed')),
    request_id       text,  -- SkyPilot's launch request
    down_request_id  text,  -- SkyPilot's teardown request
    cost_per_hour    numeric(14, 4),  -- the optimizer's estimate, USD
    resources        text NOT NULL DEFAULT '',  -- the optimizer's choice, as SkyPilot prints it
    reason           text NOT NULL DEFAULT '',  -- why it ended or is ending
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    up_at            timestamptz,
    ended_at         timestamptz
);
CREATE SEQUENCE pool_launches_id_seq OWNED BY pool_launches.id;
CREATE INDEX pool_launches_live_idx ON pool_launches (pool_name)
    WHERE state IN ('launching', 'up', 'terminating');

SELECT allow_audit_entities('pool');
