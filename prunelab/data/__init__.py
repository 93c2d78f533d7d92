"""Data: offline loaders (``--data-dir`` / ``PRUNELAB_DATA``, binding when named) with an HF ``datasets``
fallback when no location is named, the source each load used, seeded samples, calibration, Dolly."""

from prunelab.data.calibration import calibration_batch, calibration_texts
from prunelab.data.instruct import DollySplit, dolly_split, format_example, format_prompt
from prunelab.data.loaders import (
    DollyRecord,
    LambadaItem,
    MCItem,
    load_arc,
    load_boolq,
    load_dolly,
    load_gsm8k,
    load_hellaswag,
    load_ifeval,
    load_lambada,
    load_mmlu,
    load_piqa,
    load_truthfulqa,
    load_wikitext2_text,
    load_winogrande,
    read_jsonl,
)
from prunelab.data.paths import data_root, require_file, set_data_dir
from prunelab.data.preflight import check_task_data
from prunelab.data.sources import DataSource
from prunelab.data.sampling import seeded_sample, split_lambada

__all__ = [
    "DataSource", "DollyRecord", "DollySplit", "LambadaItem", "MCItem", "calibration_batch", "calibration_texts",
    "check_task_data", "data_root", "dolly_split", "format_example", "format_prompt", "load_arc", "load_boolq",
    "load_dolly", "load_gsm8k", "load_hellaswag", "load_ifeval", "load_lambada", "load_mmlu", "load_piqa",
    "load_truthfulqa", "load_wikitext2_text", "load_winogrande", "read_jsonl", "require_file", "seeded_sample",
    "set_data_dir", "split_lambada",
]
