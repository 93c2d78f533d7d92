"""The depth-pruning study (objectives × searches × budgets), as in "Rethinking Layer Redundancy".

:mod:`.run` searches and evaluates (:func:`run_depth_study`), :mod:`.outputs` renders the tables and writes the
study directory (:func:`write_study`), :mod:`.figures` draws the mask grids and the rank scatter.
"""

from prunelab.studies.depth.outputs import comparison_table, study_table_objects, study_tables, write_study
from prunelab.studies.depth.run import DepthStudy, StudyRow, run_depth_study, spearman_ranks

__all__ = ["DepthStudy", "StudyRow", "comparison_table", "run_depth_study", "spearman_ranks", "study_table_objects",
           "study_tables", "write_study"]
