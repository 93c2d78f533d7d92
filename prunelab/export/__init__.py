"""Serve what you prune: GGUF export for llama.cpp, vanilla-loadable zero padding, model cards."""

from prunelab.models.card import model_card, source_info, write_model_card
from prunelab.export.gguf import OUTTYPES, GGUFExportReport, export_gguf
from prunelab.export.hf_pad import PadReport, pad_uniform, uniform_shape

__all__ = ["OUTTYPES", "GGUFExportReport", "PadReport", "export_gguf", "model_card", "pad_uniform", "source_info",
           "uniform_shape", "write_model_card"]
