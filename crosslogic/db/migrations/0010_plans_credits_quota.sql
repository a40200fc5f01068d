-- Plans, prepaid credits and the quota state the gateway enforces.
--
-- A plan carries its tenants' default rate limits (rate_limits rows of scope 'plan'), a
-- monthly free allowance (tokens or USD, at most one) and the billing mode its tenants get
-- unless they set their own. A tenant is prepaid (refused once its credits and its allowance
-- are used up) or postpaid (billed in arrears; refused only past its monthly spend cap).
-- billing computes the quota state after it commits usage rows and stores it on the tenant;
-- ext_authz reads it with the key (cached), never per request.

CREATE TABLE plans (
    name                     text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    description              text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    billing_mode             text NOT NULL DEFAULT 'postpaid'
                             CHECK (billing_mode IN ('prepaid', 'postpaid')),
    monthly_allowance_tokens bigint CHECK (monthly_allowance_tokens > 0),
    monthly_allowance_usd    numeric(20, 10) CHECK (monthly_allowance_usd > 0),
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CHECK (monthly_allowance_tokens IS NULL OR monthly_allowance_usd IS NULL)
);

INSERT INTO plans (name, description, billing_mode, monthly_allowance_tokens,
                   monthly_allowance_usd)
VALUES ('default', 'Tenants created before plans existed: postpaid, generous limits',
        'postpaid', NULL, NULL),
       ('free', 'Free tier: a monthly token allowance, then prepaid credits', 'prepaid',
        1000000, NULL),
       ('developer', 'Prepaid, with USD 5 of usage free every month', 'prepaid', NULL, 5),
       ('pro', 'Postpaid, invoiced monthly', 'postpaid', NULL, NULL),
       ('enterprise', 'Postpaid, high limits', 'postpaid', NULL, NULL)
ON CONFLICT (name) DO NOTHING;
-- every plan a tenant already names exists (with no allowance, postpaid: as before)
INSERT INTO plans (name)
SELECT DISTINCT plan FROM tenants WHERE plan ~ '^[a-z0-9][a-z0-9_-]{0,62}$'
ON CONFLICT (name) DO NOTHING;

-- Default limits of each plan's tenants (an operator's own rows are kept). Requests and
-- tokens both, so every key gets OpenAI's x-ratelimit-*-requests and -tokens headers.
INSERT INTO rate_limits (scope, subject, layer, requests_per_minute, tokens_per_minute,
                         tokens_per_day)
VALUES ('plan', 'default', 'tenant', 1000000, 1000000000, NULL),
       ('plan', 'free', 'tenant', 60, 40000, 1000000),
       ('plan', 'developer', 'tenant', 600, 400000, NULL),
       ('plan', 'pro', 'tenant', 5000, 4000000, NULL),
       ('plan', 'enterprise', 'tenant', 100000, 100000000, NULL)
ON CONFLICT (scope, subject, layer) DO NOTHING;

ALTER TABLE tenants
    -- NULL: the plan's mode, or postpaid with a Stripe customer
    ADD COLUMN billing_mode text CHECK (billing_mode IN ('prepaid', 'postpaid')),
    ADD COLUMN monthly_spend_cap_usd numeric(20, 10) CHECK (monthly_spend_cap_usd > 0),
    -- set by billing when the tenant's quota is used up: ext_authz refuses its requests
    ADD COLUMN quota_exhausted_at timestamptz,
    ADD COLUMN quota_reason text
        CHECK (quota_reason IN ('credits_exhausted', 'allowance_used', 'spend_cap_reached')),
    ADD CONSTRAINT tenants_quota_check
        CHECK ((quota_exhausted_at IS NULL) = (quota_reason IS NULL));
CREATE INDEX tenants_plan_idx ON tenants (plan);

CREATE TABLE credit_grants (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    amount_usd numeric(20, 10) NOT NULL CHECK (amount_usd > 0),
    granted_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz CHECK (expires_at > granted_at),
    note       text NOT NULL DEFAULT '' CHECK (length(note) <= 500),
    actor      text NOT NULL
);
CREATE INDEX credit_grants_tenant_idx ON credit_grants (tenant_id, granted_at);

-- Add this migration's audited entities to whatever the check allows by now (other
-- migrations extend it too): rebuilt from its current definition, not restated.
DO $$
DECLARE
    definition text;
BEGIN
    SELECT pg_get_constraintdef(oid) INTO definition
    FROM pg_constraint WHERE conname = 'audit_log_entity_type_check';
    IF definition IS NULL OR position('ARRAY[' IN definition) = 0 THEN
        RAISE EXCEPTION 'unexpected audit_log_entity_type_check: %', definition;
    END IF;
    IF position('''credit_grant''' IN definition) = 0 THEN
        ALTER TABLE audit_log DROP CONSTRAINT audit_log_entity_type_check;
        EXECUTE 'ALTER TABLE audit_log ADD CONSTRAINT audit_log_entity_type_check '
            || replace(definition, 'ARRAY[', 'ARRAY[''plan''::text, ''credit_grant''::text, ');
    END IF;
END
$$;
