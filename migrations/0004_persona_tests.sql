-- Persona test suites: a message to send and what the answer must (or must not) say. Runs store nothing.

CREATE TABLE persona_tests (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    persona_id uuid NOT NULL REFERENCES personas (id) ON DELETE CASCADE,
    name       text NOT NULL,
    message    text NOT NULL,
    -- {"contains": [...], "not_contains": [...], "regex": "..." or null, "max_chars": N or null}
    expect     jsonb NOT NULL,
    created_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX persona_tests_persona_idx ON persona_tests (persona_id, created_at, id);
