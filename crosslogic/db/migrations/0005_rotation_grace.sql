-- Rotation no longer overwrites a key's own expiry: the grace period is a separate fact, so a
-- successor can inherit the expiry the operator set (never a grace end) and a rotated key is
-- recognisable (it is rotated once; its successor is rotated next). A key stops working at
-- LEAST(expires_at, grace_ends_at).
ALTER TABLE api_keys
    ADD COLUMN IF NOT EXISTS rotated_at timestamptz,
    ADD COLUMN IF NOT EXISTS grace_ends_at timestamptz;

-- Keys rotated before this migration had their grace end written into expires_at; their
-- first successor copied the expiry they had before. Restore it from there.
UPDATE api_keys AS k
SET rotated_at = s.created_at, grace_ends_at = k.expires_at, expires_at = s.expires_at
FROM (
    SELECT DISTINCT ON (rotated_from) rotated_from, created_at, expires_at
    FROM api_keys WHERE rotated_from IS NOT NULL
    ORDER BY rotated_from, created_at
) AS s
WHERE s.rotated_from = k.id AND k.rotated_at IS NULL;

ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_rotation_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_rotation_check
    CHECK ((rotated_at IS NULL) = (grace_ends_at IS NULL));
