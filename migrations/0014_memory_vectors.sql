-- Vectors for memory retrieval (contract section 15, EMBEDDINGS_PROVIDER), only where PostgreSQL has pgvector: a
-- server without it (the system PostgreSQL 15 of Debian 12 has no package) migrates all the same, and the runtime
-- ranks memories by full text there (it says so once at start when EMBEDDINGS_PROVIDER is set).
-- `embedding` has no fixed dimension: models differ (1536 for text-embedding-3-small, 768, 1024...) and changing
-- EMBEDDINGS_MODEL needs no migration. `embedding_model` is the model that made it: a turn compares only vectors
-- of the model it embeds its message with (vectors of two dimensions cannot be compared). No approximate index: a
-- turn ranks at most `max_items` memories of one user and persona, found by memories_user_persona_idx.
-- A role that may not create the extension leaves it out as if it were not installed (a notice says so); a database
-- administrator can run `CREATE EXTENSION vector` and the statements below later.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS vector;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pgvector is installed but this role may not create the extension: memories are ranked by full text';
            RETURN;
        END;
        ALTER TABLE memories ADD COLUMN IF NOT EXISTS embedding vector;
        ALTER TABLE memories ADD COLUMN IF NOT EXISTS embedding_model text;
        -- A memory's vector goes with the text it was made of: rewriting the text, by any path, clears it until
        -- the runtime stores the new one (which sets only the vector columns, so this does not fire).
        CREATE OR REPLACE FUNCTION memories_clear_embedding() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
            NEW.embedding := NULL;
            NEW.embedding_model := NULL;
            RETURN NEW;
        END
        $fn$;
        CREATE TRIGGER memories_clear_embedding BEFORE UPDATE OF content ON memories
            FOR EACH ROW WHEN (OLD.content IS DISTINCT FROM NEW.content) EXECUTE FUNCTION memories_clear_embedding();
    END IF;
END
$$;
