"""What lives in a work dir: its paths and column names (layout), the plan (manifest), each shard's
state (done), locks, the run record, the atomic write, and the status a user sees."""
