"""Data: offline loaders (``PRUNELAB_DATA``) with HF ``datasets`` fallback, seeded samples, calibration, Dolly."""

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
from prunelab.data.sampling import seeded_sample, split_lambada

__all__ = [
    "DollyRecord", "DollySplit", "LambadaItem", "MCItem", "calibration_batch", "calibration_texts", "data_root",
    "dolly_split", "format_example", "format_prompt", "load_arc", "load_boolq", "load_dolly", "load_gsm8k",
    "load_hellaswag", "load_ifeval", "load_lambada", "load_mmlu", "load_piqa", "load_truthfulqa",
    "load_wikitext2_text", "load_winogrande", "read_jsonl", "require_file", "seeded_sample", "set_data_dir",
    "split_lambada",
]
