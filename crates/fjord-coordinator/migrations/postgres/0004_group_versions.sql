-- Fjord coordinator schema, version 4: versioned group blobs (fencing between coordinators).
--
-- Every save of a group's blob gives it a version from fjord_group_versions, so a version is never
-- used twice, not even by a group deleted and created again. A broker saves a group by
-- compare-and-set on the version it last read or wrote, and makes offset commits conditional on
-- it: a broker with a stale view of a group (another broker coordinated it meanwhile) is refused
-- instead of overwriting newer state. A group without a blob has version 0.
--
-- Writes to one group serialize on a transaction-scoped advisory lock derived from its key (the
-- `groups` module): saves and deletions take it exclusively, fenced offset writes shared, so a
-- fenced commit checks the version and writes its offsets with no save in between, also while
-- the group has no row yet.
CREATE SEQUENCE fjord_group_versions AS bigint START WITH 1;
ALTER TABLE fjord_groups ADD COLUMN version bigint;
UPDATE fjord_groups SET version = nextval('fjord_group_versions');
ALTER TABLE fjord_groups ALTER COLUMN version SET NOT NULL;
ALTER TABLE fjord_groups ADD CHECK (version > 0);

-- Brokers older than this migration (during a rolling upgrade) save groups without knowing the
-- version: an insert still gets one, and an update that leaves it alone gets a new one, so their
-- writes fence the newer brokers' stale views too.
ALTER TABLE fjord_groups ALTER COLUMN version SET DEFAULT nextval('fjord_group_versions');
CREATE FUNCTION fjord_group_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version = OLD.version THEN
        NEW.version := nextval('fjord_group_versions');
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER fjord_group_version_bump BEFORE UPDATE ON fjord_groups
    FOR EACH ROW EXECUTE FUNCTION fjord_group_version_bump();
