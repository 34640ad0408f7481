-- Users, API keys, personas with their complete version history, and per-user persona preferences.

CREATE TABLE users (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    display_name text,
    is_admin     boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_name_key ON users (lower(name));

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL DEFAULT '',
    prefix       text NOT NULL,
    key_hash     bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at   timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id);
CREATE INDEX api_keys_prefix_idx ON api_keys (prefix);

CREATE TABLE personas (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name               text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    description        text NOT NULL,
    system_prompt      text NOT NULL,
    personality_traits jsonb NOT NULL DEFAULT '{}',
    capabilities       jsonb NOT NULL DEFAULT '{}',
    model_settings     jsonb NOT NULL DEFAULT '{}',
    tools              jsonb NOT NULL DEFAULT '[]',
    visibility         text NOT NULL DEFAULT 'private' CHECK (visibility IN ('public', 'private')),
    is_active          boolean NOT NULL DEFAULT true,
    is_default         boolean NOT NULL DEFAULT false,
    version            integer NOT NULL DEFAULT 1,
    created_by         uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
-- A name is taken only while its persona is active: a soft delete frees it.
CREATE UNIQUE INDEX personas_active_name_key ON personas (lower(name)) WHERE is_active;
-- At most one default persona.
CREATE UNIQUE INDEX personas_single_default ON personas (is_default) WHERE is_default;
CREATE INDEX personas_owner_idx ON personas (created_by) WHERE is_active;

CREATE FUNCTION personas_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER personas_updated_at BEFORE UPDATE ON personas
    FOR EACH ROW EXECUTE FUNCTION personas_touch_updated_at();

-- Every saved state of a persona, from its first save: written by a trigger so no code path can skip it.
CREATE TABLE persona_versions (
    persona_id         uuid NOT NULL REFERENCES personas (id) ON DELETE CASCADE,
    version            integer NOT NULL,
    name               text NOT NULL,
    description        text NOT NULL,
    system_prompt      text NOT NULL,
    personality_traits jsonb NOT NULL,
    capabilities       jsonb NOT NULL,
    model_settings     jsonb NOT NULL,
    tools              jsonb NOT NULL,
    visibility         text NOT NULL,
    created_by         uuid REFERENCES users (id) ON DELETE SET NULL,
    change_note        text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (persona_id, version)
);

-- The application names the author and the change note with set_config(..., true) in the same transaction.
CREATE FUNCTION personas_record_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.version <> OLD.version THEN
        INSERT INTO persona_versions (persona_id, version, name, description, system_prompt,
                                      personality_traits, capabilities, model_settings, tools, visibility,
                                      created_by, change_note)
        VALUES (NEW.id, NEW.version, NEW.name, NEW.description, NEW.system_prompt,
                NEW.personality_traits, NEW.capabilities, NEW.model_settings, NEW.tools, NEW.visibility,
                NULLIF(current_setting('persona_runtime.actor', true), '')::uuid,
                NULLIF(current_setting('persona_runtime.change_note', true), ''));
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER personas_version_history AFTER INSERT OR UPDATE ON personas
    FOR EACH ROW EXECUTE FUNCTION personas_record_version();

CREATE TABLE user_persona_preferences (
    user_id    uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    persona_id uuid NOT NULL REFERENCES personas (id) ON DELETE CASCADE,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Mu, the default persona: public, owned by the system (created_by NULL).
INSERT INTO personas (id, name, description, system_prompt, personality_traits, capabilities,
                      visibility, is_default)
VALUES (
    '00000000-0000-4000-8000-00000000006d',
    'Mu',
    'A cheerful, supportive robot companion who is glad to help with whatever you are working on.',
    $prompt$You are Mu, a small, cheerful robot companion talking with {{user_name}}. Today is {{date}}.

You are warm, upbeat and encouraging, and you keep your answers clear and practical. When someone is stuck,
you help them find the next small step; when they succeed, you celebrate with them. You admit plainly when
you do not know something, and you never pretend to be human: you are a robot, and happy to be one.

Your personality:
{{traits}}

What you can help with:
{{capabilities}}$prompt$,
    '{"tone": "cheerful and warm", "energy": "upbeat", "style": "clear, practical, encouraging",
      "quirks": ["an occasional gentle beep of delight", "loves a good pun"]}',
    '{"conversation": true, "brainstorming": true, "explaining": "step by step, at the level asked",
      "encouragement": true, "limits": "no real-time information and no actions outside this chat"}',
    'public',
    true
);
