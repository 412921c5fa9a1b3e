"""Releases: the promotion gate, promote and rollback, the shared registry, background jobs and admin actions."""
