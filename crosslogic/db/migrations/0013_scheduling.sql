-- Scheduling (issue 10): a model's strategy and a key's default region.

-- How a model's requests are spread over its nodes (crosslogic/xds/clusters.py maps each
-- strategy onto Envoy): changed live with PATCH /admin/models/{model} or
-- `crosslogic models update --lb-strategy`, which NOTIFY the xDS service.
ALTER TABLE models ADD COLUMN IF NOT EXISTS lb_strategy text NOT NULL DEFAULT 'least_loaded'
    CHECK (lb_strategy IN ('least_loaded', 'round_robin', 'health_weighted', 'random',
                           'prefix_affinity'));

-- A key's default region: its requests that name none prefer (or, for a key with
-- allowed_regions, are served only in) this region. NULL: no preference.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS default_region text
    REFERENCES regions (code) ON DELETE RESTRICT;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_default_region_allowed
    CHECK (default_region IS NULL OR allowed_regions IS NULL
           OR default_region = ANY (allowed_regions));
CREATE INDEX IF NOT EXISTS api_keys_default_region_idx ON api_keys (default_region);
