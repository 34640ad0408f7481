-- Stored responses of /v1/responses (contract section 17): what a later request continues with
-- `previous_response_id`. `messages` is the conversation through this response in the runtime's provider-neutral
-- form, `system` the system and developer texts its input items carried (a request's `instructions` are not
-- carried on, as OpenAI does), `body` the response object as it was answered. Kept until `expires_at`
-- (RESPONSE_RETENTION_DAYS after it was made). Numbered 0012: 0009 to 0011 are reserved for context and lore.
CREATE TABLE responses (
    id          text PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    messages    jsonb NOT NULL,
    system      jsonb NOT NULL DEFAULT '[]',
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX responses_user_expiry_idx ON responses (user_id, expires_at);
