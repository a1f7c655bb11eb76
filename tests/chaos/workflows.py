"""Workflows of the chaos suite."""
