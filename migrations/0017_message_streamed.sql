-- Whether an answer went out as a stream: a replay of a message answered without one (`"stream": false`, a
-- greeting) says so, rather than that its stream expired. NULL for answers stored before this was kept.
ALTER TABLE messages ADD COLUMN streamed boolean;
