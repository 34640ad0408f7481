-- Context within a token budget (contract section 13).
-- messages.tokens: what a message costs in the context (its text and the per-message overhead), counted once
-- when it is stored, so that a turn never re-tokenizes its history; null for rows stored before this.
-- messages.context: for an assistant message, the account of what it was given (render's `context`, with
-- `lore_ids` and `memory_ids`).
-- conversations.user_turns: how many user turns the conversation has had (lore's timed effects count them).
-- conversations.token_ratio: provider-reported input tokens over our estimate, for estimated tokenizers.
-- conversations.summary*: the rolling summary of the turns that fell out of the window, and the last message
-- it covers.
ALTER TABLE messages ADD COLUMN tokens integer;
ALTER TABLE messages ADD COLUMN context jsonb;

ALTER TABLE conversations ADD COLUMN user_turns integer NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN token_ratio real;
ALTER TABLE conversations ADD COLUMN summary text;
ALTER TABLE conversations ADD COLUMN summary_tokens integer;
ALTER TABLE conversations ADD COLUMN summary_covers_seq bigint;
ALTER TABLE conversations ADD COLUMN summary_covers_message_id uuid;
ALTER TABLE conversations ADD COLUMN summary_updated_at timestamptz;

UPDATE conversations c SET user_turns = n.count
FROM (SELECT conversation_id, count(*) AS count FROM messages WHERE role = 'user' GROUP BY conversation_id) n
WHERE n.conversation_id = c.id;
