"""Prompt templates, installed as rewrite.prompts."""
