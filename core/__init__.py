"""The ground every layer stands on: the error tree, the stream events, and the infrastructure every job uses
(the database pool, Redis, signals between instances, logs and metrics)."""
