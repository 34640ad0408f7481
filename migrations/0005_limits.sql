-- Rate limits and token budgets (section 9): a key's bound what is done with it, a persona's bound each user's
-- use of it. Each is {"requests_per_minute"?, "tokens_per_minute"?, "tokens_per_day"?}; '{}' is no limit.
-- A persona's limits are part of its content, so they are versioned with it.

ALTER TABLE api_keys ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
ALTER TABLE personas ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
ALTER TABLE persona_versions ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';

CREATE OR REPLACE FUNCTION personas_record_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.version <> OLD.version THEN
        INSERT INTO persona_versions (persona_id, version, name, description, system_prompt,
                                      personality_traits, capabilities, model_settings, tools, visibility,
                                      extensions, limits, created_by, change_note)
        VALUES (NEW.id, NEW.version, NEW.name, NEW.description, NEW.system_prompt,
                NEW.personality_traits, NEW.capabilities, NEW.model_settings, NEW.tools, NEW.visibility,
                NEW.extensions, NEW.limits,
                NULLIF(current_setting('persona_runtime.actor', true), '')::uuid,
                NULLIF(current_setting('persona_runtime.change_note', true), ''));
    END IF;
    RETURN NEW;
END $$;
