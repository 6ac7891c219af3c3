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
