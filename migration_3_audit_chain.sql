-- Migration 3: the hash chain of the audit log.
--
-- Every audit row written from now on carries prev_hash (the hash of the
-- chained row before it, or the genesis value of 64 zeros for the first one)
-- and hash = SHA-256(prev_hash || canonical encoding of the row), both as
-- lowercase hex; see auditHash in audit_chain.go and "Audit hash chain" in
-- README.md. Rows written before this migration keep NULL in both columns:
-- they are "unchained". ADD COLUMN does not update any row, so the
-- append-only triggers of migration 1 are untouched and still apply.
ALTER TABLE audit_event ADD COLUMN prev_hash TEXT
    CHECK (prev_hash IS NULL OR (length(prev_hash) = 64 AND prev_hash NOT GLOB '*[^0-9a-f]*'));
ALTER TABLE audit_event ADD COLUMN hash TEXT
    CHECK (hash IS NULL OR (length(hash) = 64 AND hash NOT GLOB '*[^0-9a-f]*'));
