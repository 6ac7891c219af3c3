-- Fjord coordinator schema, version 5: the commit watermark.
--
-- Garbage collection raises the watermark (ms) before it reads which objects are referenced,
-- and deletes unreferenced objects only when the time in their key (a UUIDv7) is below it. A
-- commit reads the watermark with FOR SHARE in its transaction and refuses objects made before
-- it; raising it takes the row exclusively, so it waits for commits in flight, and every commit
-- after it sees the new value. An object garbage collection deletes can therefore never become
-- referenced.
CREATE TABLE fjord_gc (
    id                  integer PRIMARY KEY CHECK (id = 1),
    commit_watermark_ms bigint NOT NULL
);
INSERT INTO fjord_gc (id, commit_watermark_ms) VALUES (1, 0);
