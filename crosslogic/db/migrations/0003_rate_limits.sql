-- Rate limits as data. A row limits one layer (global, tenant, environment, key). Rows with
-- scope 'plan' are the defaults of every tenant on that plan (for its tenant, environment and
-- key layers); rows with scope tenant/environment/key override them for one subject.

CREATE TABLE rate_limits (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope               text NOT NULL
                        CHECK (scope IN ('global', 'plan', 'tenant', 'environment', 'key')),
    subject             text NOT NULL DEFAULT '',   -- plan name, or the tenant/env/key uuid
    layer               text NOT NULL
                        CHECK (layer IN ('global', 'tenant', 'environment', 'key')),
    requests_per_second integer CHECK (requests_per_second > 0),
    requests_per_minute integer CHECK (requests_per_minute > 0),
    tokens_per_minute   bigint CHECK (tokens_per_minute > 0),
    tokens_per_day      bigint CHECK (tokens_per_day > 0),
    -- what the layer does when Redis cannot answer: 'open' admits (bounded by an in-process
    -- limiter), 'closed' refuses
    fail_mode           text NOT NULL DEFAULT 'open' CHECK (fail_mode IN ('open', 'closed')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (scope, subject, layer),
    CHECK ((scope = 'global') = (layer = 'global')),
    CHECK (scope <> 'global' OR subject = ''),
    CHECK (scope IN ('global', 'plan') OR layer = scope),
    CHECK (scope = 'global' OR subject <> ''),
    CHECK (coalesce(requests_per_second, requests_per_minute, tokens_per_minute,
                    tokens_per_day) IS NOT NULL)
);

ALTER TABLE audit_log DROP CONSTRAINT audit_log_entity_type_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_entity_type_check
    CHECK (entity_type IN ('tenant', 'environment', 'api_key', 'rate_limit'));
