-- Fjord coordinator schema, version 10: a broker's listeners.
--
-- A broker may serve several listeners (e.g. INTERNAL=PLAINTEXT and EXTERNAL=SSL), each with the
-- address clients of that listener are told. Metadata answers a client with the addresses of the
-- listener it connected to, so every broker publishes all of its own here, as a JSON list of
-- {name, host, port, security_protocol}. host and port stay the address brokers use to reach
-- each other; brokers registered before this version have an empty list and are reached by
-- host and port on every listener.
ALTER TABLE fjord_brokers ADD COLUMN listeners jsonb NOT NULL DEFAULT '[]';
