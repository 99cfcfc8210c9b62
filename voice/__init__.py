"""Parley voice package."""
