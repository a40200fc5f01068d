-- Pricing rules as versioned data. A price applies from its effective_at on, never before:
-- a new version is a new row (history is never rewritten), and may be scheduled in the
-- future. Billing loads these tables into memory and picks the version in force at each
-- request's started_at. USD per million tokens, NUMERIC throughout.

CREATE TABLE model_prices (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id             integer NOT NULL REFERENCES models (id) ON DELETE RESTRICT,
    prompt_per_mtok      numeric(12, 6) NOT NULL CHECK (prompt_per_mtok >= 0),
    completion_per_mtok  numeric(12, 6) NOT NULL CHECK (completion_per_mtok >= 0),
    embedding_per_mtok   numeric(12, 6) NOT NULL CHECK (embedding_per_mtok >= 0),
    effective_at         timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_id, effective_at)
);

-- A tenant's contract price for a model (replaces the list price and its region multiplier),
-- a discount on the list price, or `none` (from then on the list price again): versioned the
-- same way, so removing an override never changes what was billed before.
CREATE TABLE tenant_prices (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id            uuid NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    model_id             integer NOT NULL REFERENCES models (id) ON DELETE RESTRICT,
    kind                 text NOT NULL CHECK (kind IN ('contract', 'discount', 'none')),
    prompt_per_mtok      numeric(12, 6) CHECK (prompt_per_mtok >= 0),
    completion_per_mtok  numeric(12, 6) CHECK (completion_per_mtok >= 0),
    embedding_per_mtok   numeric(12, 6) CHECK (embedding_per_mtok >= 0),
    discount_percent     numeric(5, 2) CHECK (discount_percent > 0 AND discount_percent <= 100),
    effective_at         timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, model_id, effective_at),
    CHECK ((kind = 'contract') = (prompt_per_mtok IS NOT NULL AND completion_per_mtok IS NOT NULL
                                  AND embedding_per_mtok IS NOT NULL)),
    CHECK ((kind = 'discount') = (discount_percent IS NOT NULL))
);
CREATE INDEX tenant_prices_model_idx ON tenant_prices (model_id);

-- models.input/output_price_per_mtok become the list price a model is created with: its
-- first version (in force since the epoch, so older usage stays priced as before). Billing
-- reads model_prices only; the columns are not updated by later versions.
INSERT INTO model_prices (model_id, prompt_per_mtok, completion_per_mtok, embedding_per_mtok,
                          effective_at)
SELECT id, input_price_per_mtok, output_price_per_mtok, input_price_per_mtok,
       '1970-01-01T00:00:00Z'
FROM models;

CREATE FUNCTION model_first_price() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO model_prices (model_id, prompt_per_mtok, completion_per_mtok,
                              embedding_per_mtok, effective_at)
    VALUES (NEW.id, NEW.input_price_per_mtok, NEW.output_price_per_mtok,
            NEW.input_price_per_mtok, '1970-01-01T00:00:00Z');
    RETURN NEW;
END $$;
CREATE TRIGGER models_first_price AFTER INSERT ON models
    FOR EACH ROW EXECUTE FUNCTION model_first_price();

-- What a usage row was priced with, so its cost can be recomputed: the serving node's region
-- (NULL when unknown), its multiplier then, the list price version and the tenant override.
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS region_code text;
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS price_multiplier numeric(8, 4);
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS price_id bigint;
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS tenant_price_id bigint;

-- The catalog's changes are audited like the accounts'. (A later migration that audits
-- another entity re-creates this constraint with every name below plus its own.)
ALTER TABLE audit_log DROP CONSTRAINT audit_log_entity_type_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_entity_type_check
    CHECK (entity_type IN ('tenant', 'environment', 'api_key', 'rate_limit', 'model', 'region',
                           'model_price', 'tenant_price'));
