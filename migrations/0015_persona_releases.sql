-- Releasing personas (contract section 16): labels that point at saved versions (`production` among them, which
-- pins it; no row: production follows the latest save), one rollout per persona that sends a share of users to
-- another version, and the variant each stored answer was served as. A label or rollout can only name a version
-- that was saved. Numbered 0015: 0016 is reserved for turn records.
CREATE TABLE persona_labels (
    persona_id uuid NOT NULL REFERENCES personas (id) ON DELETE CASCADE,
    label      text NOT NULL CHECK (label ~ '^[a-z0-9_-]{1,32}$'),
    version    integer NOT NULL,
    set_by     uuid REFERENCES users (id) ON DELETE SET NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (persona_id, label),
    FOREIGN KEY (persona_id, version) REFERENCES persona_versions (persona_id, version) ON DELETE CASCADE
);

CREATE TABLE persona_rollouts (
    persona_id uuid PRIMARY KEY REFERENCES personas (id) ON DELETE CASCADE,
    version    integer NOT NULL,
    percent    smallint NOT NULL CHECK (percent BETWEEN 1 AND 100),
    set_by     uuid REFERENCES users (id) ON DELETE SET NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (persona_id, version) REFERENCES persona_versions (persona_id, version) ON DELETE CASCADE
);

ALTER TABLE messages ADD COLUMN variant text
    CHECK (variant IN ('production', 'rollout', 'label', 'pinned', 'draft'));
