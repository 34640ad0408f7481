-- An answer being generated is held by the instance that runs it for a short lease, renewed while it
-- runs. An instance that dies (killed, its machine gone) stops renewing: any other instance then marks
-- the answer incomplete instead of leaving it pending for ever.
ALTER TABLE messages ADD COLUMN lease_until timestamptz;
CREATE INDEX messages_pending_lease_idx ON messages (lease_until) WHERE status = 'pending';
