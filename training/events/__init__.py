"""The event store: query events, feedback, chunk texts, evaluations, promotions, jobs; SQLite or PostgreSQL."""
