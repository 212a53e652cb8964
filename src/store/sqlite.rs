//! The default embedded store: SQLite in WAL mode with grouped, synchronous commits.
