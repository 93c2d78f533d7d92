"""Recovery: LoRA mechanisms (ketamine / ssri / neurosteroid / YAML), isodose budgets, Adapt-Accel."""

from prunelab.recover.accel import AccelPhase, AccelResult, accel
from prunelab.recover.isodose import (
    IsodosePlan,
    epoch_flops,
    honest_flops,
    isodose_epochs,
    parse_reference,
    plan_isodose,
    train_flops,
)
from prunelab.recover.mechanisms import (
    MECHANISMS,
    Mechanism,
    count_trainable_lora_params,
    get_mechanism,
    load_mechanisms_yaml,
)
from prunelab.recover.train import RecoveryResult, recover, recover_isodose, tokenize_records

__all__ = [
    "AccelPhase", "AccelResult", "IsodosePlan", "accel", "MECHANISMS", "Mechanism", "RecoveryResult", "count_trainable_lora_params", "epoch_flops",
    "get_mechanism", "honest_flops", "isodose_epochs", "load_mechanisms_yaml", "parse_reference", "plan_isodose",
    "recover", "recover_isodose", "tokenize_records", "train_flops",
]
