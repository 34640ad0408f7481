-- What a persona brings to a long conversation (contract sections 13 and 14): a lorebook (null or
-- {"scan_depth", "token_budget", "recursive", "entries"}), a card's greetings (strings), example messages
-- ([{"role", "content"}]) and scenario. They are part of the persona's content, so they are versioned with it.

ALTER TABLE personas ADD COLUMN lorebook jsonb;
ALTER TABLE personas ADD COLUMN greetings jsonb NOT NULL DEFAULT '[]';
ALTER TABLE personas ADD COLUMN example_messages jsonb NOT NULL DEFAULT '[]';
ALTER TABLE personas ADD COLUMN scenario text;
ALTER TABLE persona_versions ADD COLUMN lorebook jsonb;
ALTER TABLE persona_versions ADD COLUMN greetings jsonb NOT NULL DEFAULT '[]';
ALTER TABLE persona_versions ADD COLUMN example_messages jsonb NOT NULL DEFAULT '[]';
ALTER TABLE persona_versions ADD COLUMN scenario text;

CREATE OR REPLACE FUNCTION personas_record_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.version <> OLD.version THEN
        INSERT INTO persona_versions (persona_id, version, name, description, system_prompt,
                                      personality_traits, capabilities, model_settings, tools, visibility,
                                      extensions, limits, lorebook, greetings, example_messages, scenario,
                                      created_by, change_note)
        VALUES (NEW.id, NEW.version, NEW.name, NEW.description, NEW.system_prompt,
                NEW.personality_traits, NEW.capabilities, NEW.model_settings, NEW.tools, NEW.visibility,
                NEW.extensions, NEW.limits, NEW.lorebook, NEW.greetings, NEW.example_messages, NEW.scenario,
                NULLIF(current_setting('persona_runtime.actor', true), '')::uuid,
                NULLIF(current_setting('persona_runtime.change_note', true), ''));
    END IF;
    RETURN NEW;
END $$;
