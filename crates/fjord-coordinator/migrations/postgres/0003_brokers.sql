-- Fjord coordinator schema, version 3: the live-broker registry.
--
-- One row per broker node id: the incarnation (a random id of the broker process) holding it,
-- where clients reach it, and when its lease ends, in ms since the epoch by the *database's*
-- clock (now()), so that brokers with skewed clocks agree on who is live. A broker is live while
-- lease_expires_ms is after the database's now(). Expired rows stay until the node id registers
-- again (the row is replaced) or its incarnation deregisters; readers skip them.
CREATE TABLE fjord_brokers (
    node_id          integer PRIMARY KEY CHECK (node_id >= 0),
    incarnation      uuid NOT NULL,
    host             text NOT NULL,
    port             integer NOT NULL,
    rack             text,
    lease_expires_ms bigint NOT NULL
);
