"""The store schema as written before outcomes, claims and ``user_version`` existed (for compatibility tests)."""

OLD_SCHEMA = """
CREATE TABLE runs (hash TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL, pruning TEXT NOT NULL,
    mechanism TEXT, seed INTEGER NOT NULL, config_json TEXT NOT NULL, metrics_json TEXT NOT NULL, flops REAL,
    timings_json TEXT NOT NULL, versions_json TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL NOT NULL,
    host TEXT);
CREATE TABLE memberships (experiment TEXT NOT NULL, hash TEXT NOT NULL, position INTEGER NOT NULL,
    meta_json TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (experiment, hash));
CREATE TABLE failures (id INTEGER PRIMARY KEY AUTOINCREMENT, hash TEXT NOT NULL, label TEXT, error TEXT NOT NULL,
    at REAL NOT NULL);
"""
