-- Hourly aggregation: usage_hourly grouped by region too, and the hours whose usage rows
-- changed since they were last aggregated.

-- The region of the node that served a request (NULL: unknown); 0007 (pricing) adds it too.
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS region_code text;

-- '' is "unknown region": a primary key column cannot be NULL
ALTER TABLE usage_hourly ADD COLUMN region_code text NOT NULL DEFAULT '';
ALTER TABLE usage_hourly DROP CONSTRAINT usage_hourly_pkey;
-- whole UTC hours, whatever the session's TimeZone (Asia/Kolkata's hours start at :30)
ALTER TABLE usage_hourly DROP CONSTRAINT usage_hourly_hour_check;
ALTER TABLE usage_hourly ADD CONSTRAINT usage_hourly_hour_check
    CHECK (hour = date_trunc('hour', hour, 'UTC'));
ALTER TABLE usage_hourly
    ADD PRIMARY KEY (tenant_id, environment_id, model_id, region_code, hour);

-- An hour (UTC) whose usage rows changed after it was last aggregated. Every statement that
-- writes usage_records marks the hours it touched, in its own transaction, by taking a new
-- version from the sequence (which also row-locks the mark until that transaction ends).
-- The aggregator reads the version, recomputes the hour, and deletes the mark only if the
-- version is still the one it read: a write it could not see left a newer version, so the
-- hour stays marked and is aggregated again. dirty_since bounds the age of the oldest
-- usage row not yet in usage_hourly (the aggregation lag).
CREATE SEQUENCE usage_hours_version;
CREATE TABLE usage_hours_dirty (
    hour        timestamptz PRIMARY KEY,
    version     bigint NOT NULL,
    dirty_since timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION mark_usage_hours() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- ordered, so that two writers lock the marks of the same hours in the same order
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO usage_hours_dirty (hour, version)
        SELECT h, nextval('usage_hours_version')
        FROM (SELECT DISTINCT date_trunc('hour', started_at, 'UTC') AS h FROM new_rows) AS t
        ORDER BY h
        ON CONFLICT (hour) DO UPDATE SET version = excluded.version;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO usage_hours_dirty (hour, version)
        SELECT h, nextval('usage_hours_version')
        FROM (SELECT DISTINCT date_trunc('hour', started_at, 'UTC') AS h FROM old_rows) AS t
        ORDER BY h
        ON CONFLICT (hour) DO UPDATE SET version = excluded.version;
    END IF;
    RETURN NULL;
END;
$$;

-- statement-level with transition tables: one upsert per hour and statement, not per row
CREATE TRIGGER usage_records_mark_insert AFTER INSERT ON usage_records
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION mark_usage_hours();
CREATE TRIGGER usage_records_mark_update AFTER UPDATE ON usage_records
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mark_usage_hours();
CREATE TRIGGER usage_records_mark_delete AFTER DELETE ON usage_records
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION mark_usage_hours();

-- what existed before this migration is aggregated by the first run
INSERT INTO usage_hours_dirty (hour, version)
SELECT h, nextval('usage_hours_version')
FROM (SELECT DISTINCT date_trunc('hour', started_at, 'UTC') AS h FROM usage_records) AS t;
