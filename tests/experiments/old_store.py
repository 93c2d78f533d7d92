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

#: the ``runs`` columns of the old schema (a newer store's extra columns are left out when copying rows into it)
OLD_RUN_COLUMNS = ("hash, kind, model, pruning, mechanism, seed, config_json, metrics_json, flops, timings_json,"
                   " versions_json, started_at, finished_at, host")


def legacy_metrics(metrics) -> dict:
    """A :class:`prunelab.runs.result.RunMetrics` in the untyped shape stores held before ``result_version`` 2:
    the recovery's figures flat in ``training``, the relapse report beside its ``eval``, ``protocol`` only when
    some task recorded one."""
    typed = metrics.model_dump(mode="json")

    def scores(evaluation: dict) -> dict:
        out = {"scores": evaluation["scores"], "n": evaluation["n"]}
        if evaluation["protocol"]:
            out["protocol"] = evaluation["protocol"]
        return out

    out = {"model": typed["model"], "eval": scores(typed["eval"])}
    if typed["training"] is not None:
        training = dict(typed["training"])
        recovery = training.pop("recovery")
        out["training"] = {**training, **{k: v for k, v in recovery.items() if v is not None}}
    if typed["relapse"] is not None:
        out["relapse"] = {"eval": scores(typed["relapse"]["eval"]), "report": typed["relapse"]["report"]}
    if typed["chronic"] is not None:
        out["chronic"] = typed["chronic"]
    return out
