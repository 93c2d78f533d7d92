"""The width-pruning dichotomy study (Martra 2025, "Fragile Knowledge, Robust Instruction-Following").

For each expansion ratio ``e = intermediate / hidden`` (the dense model's own ratio included), a fresh copy of
the model is width-pruned with a criterion (MAW by default) so that every GLU-MLP keeps
``round(e · hidden)`` neurons, then a capability battery grouped by kind is evaluated and efficiency is
measured. From the per-ratio scores the study derives:

- each capability **normalised to dense**: ``score(e) / score(dense)`` (for perplexity, where lower is
  better, ``ppl(dense) / ppl(e)``, so 1 = dense and < 1 = worse for every series);
- per kind, the mean of its tasks' normalised scores;
- **Pearson r with its two-sided p** (``scipy.stats.pearsonr`` via :func:`prunelab.scores.pearson`)
  between every pair of task series (raw primary metrics, as the study correlates MMLU with
  TruthfulQA-MC2: r = −0.864, p = 0.012 on Llama-3.2-3B) and between every pair of kind series.

The seams: :mod:`.plan` (battery, ratio validation), :mod:`.run` (:func:`run_dichotomy`), :mod:`.analysis`
(normalisation, correlations), :mod:`.outputs` (tables and files, :func:`write_outputs`), :mod:`.figures`.
"""

from prunelab.studies.dichotomy.analysis import PairCorrelation, correlation_matrix
from prunelab.studies.dichotomy.outputs import vs_dense_table, write_outputs
from prunelab.studies.dichotomy.plan import (BATTERY, RatioPlan, kept_width, kind_of, parse_ratios,
                                             validate_expansion_ratios)
from prunelab.studies.dichotomy.run import DichotomyResult, RatioPoint, run_dichotomy

__all__ = ["BATTERY", "DichotomyResult", "PairCorrelation", "RatioPlan", "RatioPoint", "correlation_matrix",
           "kept_width", "kind_of", "parse_ratios", "run_dichotomy", "validate_expansion_ratios", "vs_dense_table",
           "write_outputs"]
