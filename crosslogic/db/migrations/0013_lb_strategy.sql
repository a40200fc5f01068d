-- How a model's requests are spread over its nodes (crosslogic/xds/clusters.py maps each
-- strategy onto Envoy): changed live with PATCH /admin/models/{model} or
-- `crosslogic models update --lb-strategy`, which NOTIFY the xDS service.
ALTER TABLE models ADD COLUMN IF NOT EXISTS lb_strategy text NOT NULL DEFAULT 'least_loaded'
    CHECK (lb_strategy IN ('least_loaded', 'round_robin', 'health_weighted', 'random',
                           'prefix_affinity'));
