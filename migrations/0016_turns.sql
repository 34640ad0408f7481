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
-- The stats of one persona and the usage of one user read a time range of one of these, and read it alone
-- (an index-only scan: what they sum is included), so a persona's turns scattered among everyone's cost no heap
-- reads.
CREATE INDEX turns_persona_time_idx ON turns (persona_id, created_at)
    INCLUDE (persona_version, variant, model, user_id, outcome, ttft_ms, input_tokens, output_tokens,
             cached_input_tokens);
CREATE INDEX turns_user_time_idx ON turns (user_id, created_at)
    INCLUDE (persona_id, key_id, model, outcome, ttft_ms, input_tokens, output_tokens, cached_input_tokens);
-- The retention's prune, and an admin's usage of everyone, read by time alone: rows arrive in time order.
CREATE INDEX turns_time_idx ON turns USING brin (created_at);

-- Feedback on a turn by its user: one a turn (the last one stands), gone with its turn. It repeats what the stats
-- group the turn by (persona, version, variant, model, key, when it began), so they count feedback from this
-- small table alone instead of joining every turn of a range to it.
CREATE TABLE turn_feedback (
    turn_id         uuid PRIMARY KEY REFERENCES turns (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL,
    key_id          uuid,
    persona_id      uuid NOT NULL,
    persona_version integer NOT NULL,
    variant         text NOT NULL,
    model           text NOT NULL,
    turn_created_at timestamptz NOT NULL,
    rating          smallint NOT NULL CHECK (rating IN (1, -1)),
    comment         text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX turn_feedback_persona_time_idx ON turn_feedback (persona_id, turn_created_at);
CREATE INDEX turn_feedback_user_time_idx ON turn_feedback (user_id, turn_created_at);
