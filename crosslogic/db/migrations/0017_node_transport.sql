-- How Envoy reaches a node, part of its registration: 'plain' HTTP, 'tls' (HTTPS: the
-- node's certificate is checked against NODE_CA_FILE and must name its address, sent as
-- SNI) or 'mtls' (HTTPS, and Envoy presents the client certificate the control plane's CA
-- issued, pushed to it by SDS; the node accepts no connection without one).
ALTER TABLE nodes
    ADD COLUMN transport text NOT NULL DEFAULT 'plain'
        CHECK (transport IN ('plain', 'tls', 'mtls'));
