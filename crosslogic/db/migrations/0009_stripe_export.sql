-- The Stripe export (crosslogic.billing.exporter): usage_hourly, summed per tenant, hour and
-- model, goes out as Stripe billing meter events. An hour that grows after it was exported
-- (late records, re-aggregation) sends only the difference, as the next event of a sequence:
-- (tenant, hour, model, meter, sequence) names one event, and its identifier (Stripe's
-- meter-event `identifier` and the request's Idempotency-Key) is derived from exactly that,
-- so a retry or a re-run never bills twice.
ALTER TABLE billing_events DROP CONSTRAINT billing_events_tenant_id_hour_model_id_meter_key;
ALTER TABLE billing_events ADD COLUMN sequence integer NOT NULL DEFAULT 0 CHECK (sequence >= 0);
ALTER TABLE billing_events
    ADD CONSTRAINT billing_events_sequence_key UNIQUE (tenant_id, hour, model_id, meter, sequence);
-- meter events carry token counts: Stripe prices them, so an event has no amount of its own
ALTER TABLE billing_events ALTER COLUMN amount_usd DROP NOT NULL;
ALTER TABLE billing_events ADD COLUMN event_name text NOT NULL DEFAULT '';
ALTER TABLE billing_events ADD COLUMN stripe_customer_id text NOT NULL DEFAULT '';
ALTER TABLE billing_events ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now();
-- Stripe's answer to the last attempt: the meter event it returned, or its error body
ALTER TABLE billing_events ADD COLUMN last_response jsonb;
DROP INDEX billing_events_pending_idx;
CREATE INDEX billing_events_due_idx ON billing_events (next_attempt_at) WHERE status <> 'sent';

-- Every attempt to send an event and Stripe's answer (one call of the stripe library, which
-- itself retries connection errors and 5xx with the same Idempotency-Key).
CREATE TABLE billing_event_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    bigint NOT NULL REFERENCES billing_events (id) ON DELETE CASCADE,
    attempt     integer NOT NULL CHECK (attempt > 0),
    at          timestamptz NOT NULL DEFAULT now(),
    outcome     text NOT NULL CHECK (outcome IN ('sent', 'failed')),
    http_status integer,          -- NULL: no HTTP answer (connection refused, reset, timeout)
    response    jsonb,
    error       text,
    UNIQUE (event_id, attempt)
);
