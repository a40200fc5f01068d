-- A usage row whose counts Envoy could not read from the node (a client that left a stream
-- before the usage chunk) is recorded from what the client was sent, and says so.
ALTER TABLE usage_records ADD COLUMN usage_estimated boolean NOT NULL DEFAULT false;

-- Request limits as large as token limits (the API accepts up to 1e12 for every field).
ALTER TABLE rate_limits
    ALTER COLUMN requests_per_second TYPE bigint,
    ALTER COLUMN requests_per_minute TYPE bigint;
