-- Usage recovered from the admission journal (a request whose access-log line its Envoy
-- never wrote, because it was killed) is billed at its estimate and says where it came from.
ALTER TABLE usage_records ADD COLUMN source text NOT NULL DEFAULT 'access_log'
    CHECK (source IN ('access_log', 'journal'));

-- Every Envoy process (boot) that wrote an access log, as billing learned of it. A boot is
-- superseded when another one answers on that Envoy's admin port; the file's size at that
-- moment bounds what it can have written. Once the consumer has read that far, the boot's
-- journal is reconciled, once.
CREATE TABLE envoy_boots (
    boot_id        text PRIMARY KEY,
    access_log     text NOT NULL,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    superseded_at  timestamptz,
    log_inode      bigint,
    log_size       bigint CHECK (log_size >= 0),
    reconciled_at  timestamptz,
    recovered      integer CHECK (recovered >= 0)
);
CREATE INDEX envoy_boots_open_idx ON envoy_boots (access_log) WHERE reconciled_at IS NULL;
