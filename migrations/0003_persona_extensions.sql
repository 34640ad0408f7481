-- Data a persona carries for round trips only (an imported card's own fields and extensions): stored and
-- versioned with the persona, never rendered into a prompt. Numbered 0003: 0002 is reserved for conversations.

ALTER TABLE personas ADD COLUMN extensions jsonb NOT NULL DEFAULT '{}';
ALTER TABLE persona_versions ADD COLUMN extensions jsonb NOT NULL DEFAULT '{}';

CREATE OR REPLACE FUNCTION personas_record_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.version <> OLD.version THEN
        INSERT INTO persona_versions (persona_id, version, name, description, system_prompt,
                                      personality_traits, capabilities, model_settings, tools, visibility,
                                      extensions, created_by, change_note)
        VALUES (NEW.id, NEW.version, NEW.name, NEW.description, NEW.system_prompt,
                NEW.personality_traits, NEW.capabilities, NEW.model_settings, NEW.tools, NEW.visibility,
                NEW.extensions,
                NULLIF(current_setting('persona_runtime.actor', true), '')::uuid,
                NULLIF(current_setting('persona_runtime.change_note', true), ''));
    END IF;
    RETURN NEW;
END $$;
