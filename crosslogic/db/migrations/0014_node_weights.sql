-- The EDS weights a node's load earns, settled with hysteresis at each heartbeat and stored
-- with the node, so that every xDS replica publishes the same weights (and the same
-- content-hash versions): a weight kept in one process's memory would differ from the
-- other replica's, and a failover would push different endpoints.
ALTER TABLE nodes
    ADD COLUMN load_weight integer NOT NULL DEFAULT 1000 CHECK (load_weight BETWEEN 1 AND 1000),
    ADD COLUMN health_weight integer NOT NULL DEFAULT 1000
        CHECK (health_weight BETWEEN 1 AND 1000);
