"""The four meta sets, installed as rewrite.meta_pairs (see README.md here)."""
