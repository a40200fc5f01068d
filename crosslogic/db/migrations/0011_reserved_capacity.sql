-- Reserved capacity: a tenant buys N tokens per minute of one model (in one region, or in
-- any) for a period of whole UTC hours, at a fixed fee. In every minute of the period the
-- tenant's tokens of that model (and region) up to N are covered by the fee; what lies
-- beyond is overage, billed at the metered price. Aggregation computes each reserved hour's
-- coverage (reserved_usage) in the transaction that aggregates the hour; Stripe receives the
-- fee as an invoice item and only the uncovered tokens as meter events.
CREATE TABLE reservations (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    model_id          integer NOT NULL REFERENCES models (id) ON DELETE RESTRICT,
    -- NULL: the model in every region
    region_code       text REFERENCES regions (code) ON DELETE RESTRICT,
    tokens_per_minute bigint NOT NULL CHECK (tokens_per_minute > 0),
    starts_at         timestamptz NOT NULL CHECK (starts_at = date_trunc('hour', starts_at, 'UTC')),
    ends_at           timestamptz NOT NULL CHECK (ends_at = date_trunc('hour', ends_at, 'UTC')),
    -- whole cents: the fee goes to Stripe as an invoice item without rounding
    fee_usd           numeric(14, 2) NOT NULL CHECK (fee_usd >= 0),
    note              text NOT NULL DEFAULT '' CHECK (length(note) <= 500),
    actor             text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);
-- no two reservations of one tenant and model overlap (checked on create, under the
-- tenant's row lock): each minute's usage has at most one reservation to draw on
CREATE INDEX reservations_tenant_idx ON reservations (tenant_id, model_id, starts_at);

-- One reserved hour: the tenant's usage in the reservation's scope (used_*) and the part of
-- it the reservation covers (covered_*; the rest is overage). Replaced with the hour's
-- aggregates, so it is exactly as current as usage_hourly.
CREATE TABLE reserved_usage (
    reservation_id            bigint NOT NULL REFERENCES reservations (id) ON DELETE CASCADE,
    hour                      timestamptz NOT NULL
                              CHECK (hour = date_trunc('hour', hour, 'UTC')),
    tenant_id                 uuid NOT NULL,
    model_id                  integer NOT NULL,
    used_prompt_tokens        bigint NOT NULL CHECK (used_prompt_tokens >= 0),
    used_completion_tokens    bigint NOT NULL CHECK (used_completion_tokens >= 0),
    used_cost_usd             numeric(24, 10) NOT NULL,
    covered_prompt_tokens     bigint NOT NULL CHECK (covered_prompt_tokens >= 0),
    covered_completion_tokens bigint NOT NULL CHECK (covered_completion_tokens >= 0),
    covered_cost_usd          numeric(24, 10) NOT NULL,
    minutes_over              integer NOT NULL CHECK (minutes_over BETWEEN 0 AND 60),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (reservation_id, hour),
    CHECK (covered_prompt_tokens <= used_prompt_tokens
           AND covered_completion_tokens <= used_completion_tokens)
);
CREATE INDEX reserved_usage_tenant_idx ON reserved_usage (tenant_id, hour);

-- What goes to Stripe as meter events per tenant, hour and model: the aggregates (summed
-- over environments and regions) less what reservations covered. The export plans from it
-- and reconciliation checks against it.
CREATE VIEW metered_hourly AS
SELECT tenant_id, hour, model_id,
       sum(prompt_tokens)::bigint AS prompt_tokens,
       sum(completion_tokens)::bigint AS completion_tokens
FROM (
    SELECT tenant_id, hour, model_id, prompt_tokens, completion_tokens FROM usage_hourly
    UNION ALL
    SELECT tenant_id, hour, model_id, -covered_prompt_tokens, -covered_completion_tokens
    FROM reserved_usage
) AS u
GROUP BY tenant_id, hour, model_id;

-- A reservation's fee is a billing event of its own (meter 'reservation_fee', quantity 1,
-- amount_usd the fee), sent and retried like the meter events.
ALTER TABLE billing_events DROP CONSTRAINT billing_events_meter_check;
ALTER TABLE billing_events ADD CONSTRAINT billing_events_meter_check
    CHECK (meter IN ('prompt_tokens', 'completion_tokens', 'reservation_fee'));
ALTER TABLE billing_events
    ADD COLUMN reservation_id bigint UNIQUE REFERENCES reservations (id) ON DELETE RESTRICT,
    ADD CONSTRAINT billing_events_fee_check
        CHECK ((meter = 'reservation_fee') = (reservation_id IS NOT NULL));
ALTER TABLE billing_events DROP CONSTRAINT billing_events_sequence_key;
CREATE UNIQUE INDEX billing_events_sequence_key ON billing_events
    (tenant_id, hour, model_id, meter, sequence) WHERE reservation_id IS NULL;

-- Let audit_log rows name more entity types: the check is rebuilt from its current
-- definition (every migration before may have extended it), not restated. Later migrations
-- that audit a new entity call this instead of repeating it.
CREATE FUNCTION allow_audit_entities(VARIADIC entities text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    definition text;
    missing text := '';
    entity text;
BEGIN
    SELECT pg_get_constraintdef(oid) INTO definition
    FROM pg_constraint WHERE conname = 'audit_log_entity_type_check';
    IF definition IS NULL OR position('ARRAY[' IN definition) = 0 THEN
        RAISE EXCEPTION 'unexpected audit_log_entity_type_check: %', definition;
    END IF;
    FOREACH entity IN ARRAY entities LOOP
        IF position(quote_literal(entity) IN definition) = 0 THEN
            missing := missing || quote_literal(entity) || '::text, ';
        END IF;
    END LOOP;
    IF missing <> '' THEN
        ALTER TABLE audit_log DROP CONSTRAINT audit_log_entity_type_check;
        EXECUTE 'ALTER TABLE audit_log ADD CONSTRAINT audit_log_entity_type_check '
            || replace(definition, 'ARRAY[', 'ARRAY[' || missing);
    END IF;
END
$$;

SELECT allow_audit_entities('reservation');
