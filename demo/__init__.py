"""The demo caption file, installed as rewrite.demo_data."""
