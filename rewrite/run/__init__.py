"""A run of one or more meta sets over shards: its configuration, checkpoint and resume, and the chunked
and streaming schedulers that feed an engine."""
