-- Several gateways (an Envoy and the billing consumer of its access log each) share one
-- database: the offset in each access log and the Envoy boots are kept per gateway
-- (GATEWAY_ID), so that two gateways whose logs have the same path on their own machines
-- never share an offset. Rows from before gateways had names belong to the default gateway.
ALTER TABLE access_log_offsets ADD COLUMN gateway text NOT NULL DEFAULT 'gateway';
ALTER TABLE access_log_offsets ALTER COLUMN gateway DROP DEFAULT;
ALTER TABLE access_log_offsets DROP CONSTRAINT access_log_offsets_pkey;
ALTER TABLE access_log_offsets ADD PRIMARY KEY (gateway, path);

ALTER TABLE envoy_boots ADD COLUMN gateway text NOT NULL DEFAULT 'gateway';
ALTER TABLE envoy_boots ALTER COLUMN gateway DROP DEFAULT;
DROP INDEX envoy_boots_open_idx;
CREATE INDEX envoy_boots_open_idx ON envoy_boots (gateway, access_log) WHERE reconciled_at IS NULL;
