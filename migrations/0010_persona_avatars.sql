-- Persona avatars (contract section 14): one image per persona, PNG, JPEG or WebP, at most 2 MB. Kept in a table of
-- its own so that the persona row, its versions and the persona cache never carry image bytes; `sha256` is the
-- image's ETag.
CREATE TABLE persona_avatars (
    persona_id   uuid PRIMARY KEY REFERENCES personas (id) ON DELETE CASCADE,
    content_type text NOT NULL CHECK (content_type IN ('image/png', 'image/jpeg', 'image/webp')),
    bytes        bytea NOT NULL,
    sha256       text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
