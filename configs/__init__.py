"""Parley configuration files (TOML), shipped as package data."""
