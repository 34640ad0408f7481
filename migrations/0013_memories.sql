-- Memories (contract section 15): what a persona remembers about a user across conversations. A memory belongs to
-- one user, for one persona or (persona_id null) for all of that user's personas. `source_message_id` is the
-- message a memory was extracted from (or null); `memory_extractions` records each message extraction ran for, so
-- a retried extraction changes nothing twice. `memory_settings` holds a user's own switch (no row: on).
-- Numbered 0013: 0010 and 0011 are reserved for other work.
CREATE TABLE memories (
    id                uuid PRIMARY KEY,
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    persona_id        uuid REFERENCES personas (id) ON DELETE CASCADE,
    content           text NOT NULL CHECK (char_length(content) BETWEEN 1 AND 1000),
    source            text NOT NULL CHECK (source IN ('user', 'extracted')),
    source_message_id uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memories_user_persona_idx ON memories (user_id, persona_id, created_at DESC);
CREATE INDEX memories_content_fts_idx ON memories USING gin (to_tsvector('simple', content));

CREATE TABLE memory_settings (
    user_id    uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    enabled    boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memory_extractions (
    message_id uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    outcome    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
