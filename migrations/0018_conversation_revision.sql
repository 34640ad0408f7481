-- A conversation's revision counts the changes to its row that a turn must not miss: a turn, a correction of
-- its token counts, anything but its summary. An instance that keeps a copy of a conversation and its window
-- stores its next turn there on the condition that the revision is still the one it copied, instead of
-- reading the conversation first. A new summary leaves the revision as it is: a turn planned with the summary
-- before it is still whole (its history starts after the messages that summary covers), and the turn's own
-- write returns the new one.
ALTER TABLE conversations ADD COLUMN revision bigint NOT NULL DEFAULT 0;

CREATE FUNCTION conversations_revise() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    summary constant text[] := ARRAY['summary', 'summary_tokens', 'summary_covers_seq', 'summary_covers_message_id',
                                     'summary_updated_at', 'revision'];
BEGIN
    IF (to_jsonb(NEW) - summary) IS DISTINCT FROM (to_jsonb(OLD) - summary) THEN
        NEW.revision := OLD.revision + 1;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER conversations_revise BEFORE UPDATE ON conversations
    FOR EACH ROW EXECUTE FUNCTION conversations_revise();
