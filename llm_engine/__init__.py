"""Parley llm_engine package."""
