-- Turn records (contract section 16): one row per turn on every route, without any text, written in batches
-- by each instance (runtime/turns/log.py) and kept TURN_RETENTION_DAYS. No foreign keys on `turns`, so a
-- batch is one COPY with nothing checked per row; ids are the assistant message's on /api/v1/chat, else new.
CREATE TABLE turns (
    id                  uuid PRIMARY KEY,
    created_at          timestamptz NOT NULL,
    user_id             uuid NOT NULL,
    key_id              uuid,
    persona_id          uuid NOT NULL,
    persona_version     integer NOT NULL,
    variant             text NOT NULL,
    route               text NOT NULL,
    provider            text NOT NULL,
    model               text NOT NULL,
    outcome             text NOT NULL,
    ttft_ms             real,
    duration_ms         real NOT NULL,
    input_tokens        integer,
    output_tokens       integer,
    cached_input_tokens integer
);
-- The stats of one persona and the usage of one user read a time range of one of these.
CREATE INDEX turns_persona_time_idx ON turns (persona_id, created_at);
CREATE INDEX turns_user_time_idx ON turns (user_id, created_at);
-- The retention's prune, and an admin's usage of everyone, read by time alone: rows arrive in time order.
CREATE INDEX turns_time_idx ON turns USING brin (created_at);

-- Feedback on a turn by its user: one a turn (the last one stands), gone with its turn.
CREATE TABLE turn_feedback (
    turn_id     uuid PRIMARY KEY REFERENCES turns (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL,
    rating      smallint NOT NULL CHECK (rating IN (1, -1)),
    comment     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
