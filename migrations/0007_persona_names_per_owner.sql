-- Names are unique per owner and among public personas (contract section 3): two users may each keep a
-- private "Seraphina", and a private persona never blocks anyone else's name.
DROP INDEX personas_active_name_key;
-- One owner's active personas (the system's, created_by null, count as one owner).
CREATE UNIQUE INDEX personas_owner_name_key
    ON personas (coalesce(created_by, '00000000-0000-0000-0000-000000000000'::uuid), lower(name)) WHERE is_active;
-- Active public personas, whoever owns them.
CREATE UNIQUE INDEX personas_public_name_key ON personas (lower(name)) WHERE is_active AND visibility = 'public';
CREATE INDEX personas_active_name_idx ON personas (lower(name)) WHERE is_active;

-- The default persona Mu's name is reserved among public and system personas, even while Mu is deleted,
-- so restoring it never depends on anyone else's choices. A trigger, so that no write path can skip it.
CREATE FUNCTION personas_reserve_default_name() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.is_active AND NEW.id <> '00000000-0000-4000-8000-00000000006d'::uuid
       AND (NEW.visibility = 'public' OR NEW.created_by IS NULL)
       AND lower(NEW.name) = (SELECT lower(name) FROM personas WHERE id = '00000000-0000-4000-8000-00000000006d'::uuid)
    THEN
        RAISE EXCEPTION 'the name % is reserved for the default persona', NEW.name
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'personas_reserved_name';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER personas_reserved_name BEFORE INSERT OR UPDATE OF name, visibility, is_active ON personas
    FOR EACH ROW EXECUTE FUNCTION personas_reserve_default_name();

-- Personas that took Mu's name while it was deleted (possible before this release): public ones become
-- private to their owner, system ones are renamed, so Mu can always come back.
UPDATE personas SET visibility = 'private'
WHERE is_active AND created_by IS NOT NULL AND visibility = 'public'
  AND id <> '00000000-0000-4000-8000-00000000006d'::uuid
  AND lower(name) = (SELECT lower(name) FROM personas WHERE id = '00000000-0000-4000-8000-00000000006d'::uuid);
UPDATE personas SET name = left(name, 90) || ' (renamed)'
WHERE is_active AND created_by IS NULL
  AND id <> '00000000-0000-4000-8000-00000000006d'::uuid
  AND lower(name) = (SELECT lower(name) FROM personas WHERE id = '00000000-0000-4000-8000-00000000006d'::uuid);
