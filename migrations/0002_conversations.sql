-- Conversations and their messages, each assistant message recording the persona version that answered.

CREATE TABLE conversations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title           text NOT NULL DEFAULT '',
    -- The persona the conversation was started with: later turns resolve to it unless told otherwise.
    persona_id      uuid REFERENCES personas (id) ON DELETE SET NULL,
    persona_version integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_user_recent_idx ON conversations (user_id, updated_at DESC, id);

CREATE TABLE messages (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    -- Insertion order, unambiguous even for rows written in the same instant.
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    role            text NOT NULL CHECK (role IN ('user', 'assistant')),
    content         text NOT NULL DEFAULT '',
    -- 'pending' while an answer streams; then complete, incomplete (stream broken, client gone) or error.
    status          text NOT NULL DEFAULT 'complete'
                    CHECK (status IN ('pending', 'complete', 'incomplete', 'error')),
    persona_id      uuid REFERENCES personas (id) ON DELETE SET NULL,
    persona_version integer,
    persona_source  text CHECK (persona_source IN ('request', 'conversation', 'preference', 'default')),
    provider        text,
    model           text,
    usage           jsonb,
    latency_ms      integer,
    finish_reason   text,
    tool_calls      jsonb,
    error           jsonb,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX messages_conversation_idx ON messages (conversation_id, seq);
