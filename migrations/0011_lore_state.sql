-- Lorebooks' timed effects per conversation (contract section 14): for each entry that is sticky or cooling
-- down, the last user turn it stays active through and the last it is kept out through, written with each
-- turn's question.
ALTER TABLE conversations ADD COLUMN lore_state jsonb;
