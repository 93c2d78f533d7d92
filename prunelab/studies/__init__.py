"""Studies: end-to-end reproductions of published experiments, each one library function + one CLI command.

- :mod:`prunelab.studies.dichotomy` — the width-pruning dichotomy (expansion-ratio sweep × capability battery
  × efficiency, with Pearson correlations between capability series).
- :mod:`prunelab.studies.depth` — the depth-pruning study (objectives × searches × budgets: removed-block masks,
  accuracy and perplexity, search time, rank correlation).
"""

from prunelab.studies.dichotomy import (
    BATTERY,
    DichotomyResult,
    RatioPoint,
    correlation_matrix,
    run_dichotomy,
    validate_expansion_ratios,
    write_outputs,
)

__all__ = ["BATTERY", "DichotomyResult", "RatioPoint", "correlation_matrix", "run_dichotomy",
           "validate_expansion_ratios", "write_outputs"]
