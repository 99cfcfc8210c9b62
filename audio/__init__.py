"""Parley audio package."""
