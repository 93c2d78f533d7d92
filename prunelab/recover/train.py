"""LoRA recovery with PEFT + the HF Trainer (study: recovery-isodose, "Parameter-Efficient Fine-Tuning").

Recipe (the recovery-isodose study's fine-tuning setup): per-device batch 4, gradient accumulation 4 (effective
16), AdamW, linear warm-up over the first 10 % of optimizer steps then linear decay to 0 (Trainer's ``linear`` schedule), gradient clipping at 1.0
(Trainer default), everything seeded. Data (:mod:`prunelab.recover.training_data`): instruction–response pairs
in the study's one prompt format (:func:`prunelab.data.format_example`) followed by EOS, truncated to ``seq_len``
tokens; callbacks (NaN guard, progress bar) in :mod:`prunelab.recover.callbacks`.

* ``pad_to_max=True`` (the study): every sample padded to exactly ``seq_len`` tokens; the model processes
  ``N·L`` tokens per epoch, which is what the isodose formula assumes.
* ``pad_to_max=False``: padding-free — each micro-batch of 4 samples is concatenated into one row with
  position ids restarting per sample (HF ``DataCollatorWithFlattening``; the attention mask is block-diagonal,
  so samples never see each other). Tokens processed = the real token count, and the honest FLOPs use it.

Loss convention: the study fine-tuned with the plain HF Trainer on padded causal-LM sequences, i.e. the loss
covers every real token (prompt and response) and ignores padding. That is the default (``loss_on="all"``);
``loss_on="response"`` masks the prompt tokens too.

NaN: a loss or a trainable weight that becomes NaN/inf stops training at once; the trainable weights are
restored to the last step whose loss was finite (saved to ``output_dir/last_good`` when given) and a
:class:`~prunelab.errors.PrunelabError` says where it happened.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.recover.callbacks import nan_guard, progress_bar, trainable_parameters
from prunelab.recover.isodose import base_forward_flops_per_token, honest_flops, train_flops
from prunelab.recover.mechanisms import Mechanism, count_trainable_lora_params, get_mechanism, lora_target_linears
from prunelab.recover.training_data import collator, tokenize_records

__all__ = ["BATCH_SIZE", "GRAD_ACCUM", "WARMUP_RATIO", "RecoveryResult", "TrainStats", "lora_config", "recover",
           "recover_isodose", "run_trainer", "tokenize_records"]

#: Study defaults.
BATCH_SIZE = 4
GRAD_ACCUM = 4
WARMUP_RATIO = 0.1


# ----------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------
@dataclass
class TrainStats:
    """What one Trainer run did."""

    loss_history: list[dict] = field(default_factory=list)  # {"step", "epoch", "loss", "lr", "grad_norm"}
    steps: int = 0
    epochs: float = 0.0
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class RecoveryResult:
    """One recovery run. ``flops`` is the study's ``6·P·L·N·E``; ``honest_flops`` includes the frozen base.

    The trained model is available as ``result.model`` (not a dataclass field, so it stays out of JSON):
    with ``merge=True`` the plain model with LoRA merged into its weights — the same object that was passed
    in, edited in place; with ``merge=False`` the PEFT-wrapped model.
    """

    mechanism: str
    mechanism_config: dict
    epochs: float
    steps: int
    n_samples: int
    seq_len: int
    padded: bool
    loss_on: str
    tokens: int
    trainable_params: int
    flops: float
    honest_flops: float
    base_flops_per_token: int
    loss_history: list[dict]
    initial_loss: float
    final_loss: float
    seconds: float
    tokens_per_second: float
    seed: int
    merged: bool
    output_dir: str | None = None
    budget: float | None = None           # isodose budget (the reference run's cost by isodose_formula), if used
    reference: str | None = None          # e.g. "ketamine:3"
    exact_epochs: float | None = None     # budget / (one epoch's cost) before rounding
    isodose_formula: str | None = None    # "study" (6·P·L·N·E) or "honest" (T·(2F + 6P)) when a budget was used

    model = None  # plain attribute (no annotation): excluded from dataclass fields / JSON


# ----------------------------------------------------------------------------------------------------------
# trainer
# ----------------------------------------------------------------------------------------------------------
def run_trainer(model: nn.Module, tokenizer, dataset: list[dict], *, lr: float, epochs: float, pad_to_max: bool,
                batch_size: int = BATCH_SIZE, grad_accum: int = GRAD_ACCUM, warmup_ratio: float = WARMUP_RATIO,
                seed: int = 0, max_steps: int | None = None, optimizers=None, callbacks: Sequence = (),
                last_good_dir: Path | None = None, save_last_good: Callable[[nn.Module, Path], None] | None = None,
                description: str = "training", progress: bool = True, weight_decay: float = 0.0) -> TrainStats:
    """Train ``model``'s trainable parameters with the HF Trainer (AdamW, linear warm-up/decay unless
    ``optimizers=(opt, scheduler)`` is given). Stops with :class:`PrunelabError` on a non-finite loss/weight."""
    from transformers import Trainer, TrainingArguments

    if batch_size < 1 or grad_accum < 1:
        raise PrunelabError(f"batch_size and grad_accum must be ≥ 1, got {batch_size}, {grad_accum}")
    if max_steps is not None and max_steps < 1:
        raise PrunelabError(f"max_steps must be ≥ 1, got {max_steps}")
    if not epochs > 0:
        raise PrunelabError(f"epochs must be positive, got {epochs}")
    if not trainable_parameters(model):
        raise PrunelabError("the model has no trainable parameters")
    tmp = Path(tempfile.mkdtemp(prefix="prunelab-train-"))
    args = TrainingArguments(
        output_dir=str(tmp),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=lr,
        num_train_epochs=epochs,
        max_steps=max_steps if max_steps is not None else -1,
        lr_scheduler_type="linear",
        warmup_steps=warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers ≥ 5
        optim="adamw_torch",
        weight_decay=weight_decay,
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        logging_nan_inf_filter=False,  # the default replaces NaN losses by a running mean: we want to see them
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        include_num_input_tokens_seen="all",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cache=False,
    )
    # No KV cache while training (Trainer sets config.use_cache = args.use_cache; we restore it afterwards):
    # an active cache also makes transformers skip the block-diagonal mask of padding-free (packed) batches,
    # which would let samples attend to each other.
    config = getattr(model, "config", None)
    old_use_cache = getattr(config, "use_cache", None)
    guard = nan_guard(model)
    cbs = [guard, *callbacks]
    steps_estimate = max_steps or math.ceil(math.ceil(len(dataset) / batch_size) / grad_accum * epochs)
    if progress:
        cbs.append(progress_bar(steps_estimate, description))
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator(pad_to_max),
                      callbacks=cbs, optimizers=optimizers if optimizers is not None else (None, None))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # prints raw log dicts; we show a rich bar instead
    start = time.perf_counter()
    try:
        trainer.train()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if config is not None:
            config.use_cache = old_use_cache
    seconds = time.perf_counter() - start
    history = [
        {"step": h["step"], "epoch": h.get("epoch"), "loss": float(h["loss"]), "lr": h.get("learning_rate"),
         "grad_norm": None if h.get("grad_norm") is None else float(h["grad_norm"])}
        for h in trainer.state.log_history if "loss" in h
    ]
    stats = TrainStats(loss_history=history, steps=trainer.state.global_step, epochs=float(trainer.state.epoch or 0),
                       tokens=int(trainer.state.num_input_tokens_seen), seconds=seconds)
    if guard.bad_step is not None:
        guard.restore()
        where = ""
        if guard.last_good is not None and last_good_dir is not None and save_last_good is not None:
            save_last_good(model, last_good_dir)
            where = f"; last good weights (after step {guard.last_good_step}) saved to {last_good_dir}"
        elif guard.last_good is not None:
            where = f"; model restored to its last good weights (after step {guard.last_good_step})"
        else:
            where = "; no step had a finite loss, so there is no good checkpoint"
        err = PrunelabError(f"{guard.bad_what} became NaN/inf at step {guard.bad_step}: training stopped "
                            f"(try a lower learning rate){where}")
        err.stats = stats  # type: ignore[attr-defined]
        err.last_good_step = guard.last_good_step  # type: ignore[attr-defined]
        raise err
    return stats


# ----------------------------------------------------------------------------------------------------------
# recover
# ----------------------------------------------------------------------------------------------------------
def lora_config(model: nn.Module, mechanism: Mechanism):
    """The PEFT ``LoraConfig`` for ``mechanism`` on this model's family."""
    from peft import LoraConfig

    lora_target_linears(model, mechanism)  # clear error if a target module is absent
    return LoraConfig(r=mechanism.r, lora_alpha=mechanism.alpha, lora_dropout=mechanism.dropout,
                      target_modules=mechanism.target_modules(model), bias="none", task_type="CAUSAL_LM")


def recover(model: nn.Module, tokenizer, mechanism: str | Mechanism, records: Sequence[Any], epochs: float,
            seq_len: int = 512, pad_to_max: bool = True, batch_size: int = BATCH_SIZE, grad_accum: int = GRAD_ACCUM,
            seed: int = 0, merge: bool = True, output_dir: str | Path | None = None, max_steps: int | None = None,
            loss_on: str = "all", lr: float | None = None, callbacks: Sequence = (), progress: bool = True,
            metadata: dict | None = None, isodose: dict | None = None) -> RecoveryResult:
    """Recover ``model`` with a LoRA ``mechanism`` on ``records`` for ``epochs`` epochs (see module docstring).

    ``output_dir`` (optional, written atomically): the merged model in HF format at ``output_dir`` itself
    (reload with :func:`prunelab.load`), the adapter in ``output_dir/adapter`` (PEFT format) and the result in
    ``output_dir/recovery.json``. With ``merge=False`` only the adapter and the JSON are written.
    ``isodose`` (``budget``, ``reference``, ``exact_epochs``) is copied into the result (see :func:`recover_isodose`).
    FLOPs: ``flops = 6·P·L·N·E`` (study) with E the epochs actually trained; ``honest_flops = T·(2F + 6P)``
    with T the tokens actually processed (:mod:`prunelab.recover.isodose`).
    """
    from peft import get_peft_model
    from transformers import set_seed

    mech = get_mechanism(mechanism)
    if lr is not None:
        mech = mech.with_(lr=lr)
    if not epochs > 0:
        raise PrunelabError(f"epochs must be positive, got {epochs}")
    trainable = count_trainable_lora_params(model, mech)  # validates targets before any work
    dataset = tokenize_records(tokenizer, records, seq_len=seq_len, pad_to_max=pad_to_max, loss_on=loss_on)
    out = Path(output_dir) if output_dir is not None else None
    base_f = base_forward_flops_per_token(model, seq_len)

    set_seed(seed)  # LoRA A matrices are randomly initialised
    was_training = model.training
    peft_model = get_peft_model(model, lora_config(model, mech))
    n_peft = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if n_peft != trainable:  # guards the FLOPs formula against PEFT matching modules we did not count
        raise PrunelabError(f"internal: PEFT adapts {n_peft:,} params but the shape count says {trainable:,}")

    def save_adapter(m: nn.Module, path: Path) -> None:
        from prunelab.atomic import atomic_dir

        with atomic_dir(path) as tmp:
            m.save_pretrained(str(tmp))

    try:
        stats = run_trainer(
            peft_model, tokenizer, dataset, lr=mech.lr, epochs=epochs, pad_to_max=pad_to_max, batch_size=batch_size,
            grad_accum=grad_accum, seed=seed, max_steps=max_steps, callbacks=callbacks,
            last_good_dir=(out.parent / f"{out.name}.last_good") if out is not None else None,
            save_last_good=save_adapter, description=f"{mech.name} r{mech.r}", progress=progress,
        )
    except PrunelabError as exc:
        peft_model.eval()
        exc.model = peft_model  # type: ignore[attr-defined]  # restored to the last good weights
        raise
    peft_model.eval()
    epochs_done = stats.epochs
    losses = [h["loss"] for h in stats.loss_history]
    result = RecoveryResult(
        mechanism=mech.name, mechanism_config=mech.to_dict(), epochs=epochs_done, steps=stats.steps,
        n_samples=len(dataset), seq_len=seq_len, padded=pad_to_max, loss_on=loss_on, tokens=stats.tokens,
        trainable_params=trainable,
        flops=train_flops(trainable, seq_len, len(dataset), epochs_done),
        honest_flops=honest_flops(base_f, trainable, stats.tokens), base_flops_per_token=base_f,
        loss_history=stats.loss_history, initial_loss=losses[0] if losses else float("nan"),
        final_loss=losses[-1] if losses else float("nan"), seconds=stats.seconds,
        tokens_per_second=stats.tokens / stats.seconds if stats.seconds > 0 else 0.0, seed=seed, merged=merge,
        output_dir=str(out) if out is not None else None, **(isodose or {}),
    )
    if out is not None:
        merged = _save_outputs(peft_model, tokenizer, out, result, merge, metadata)
    else:
        merged = peft_model.merge_and_unload() if merge else None
    if merge:
        merged.train(was_training)
        result.model = merged
    else:
        result.model = peft_model
    return result


def _save_outputs(peft_model, tokenizer, out: Path, result: RecoveryResult, merge: bool, metadata: dict | None):
    """Adapter → ``out/adapter``; merged model → ``out``; result → ``out/recovery.json`` (one atomic rename).

    Returns the merged model (merged in place, no copy) when ``merge``, else None.
    """
    import json

    from prunelab.atomic import atomic_dir, to_jsonable
    from prunelab.models import save

    out.parent.mkdir(parents=True, exist_ok=True)
    adapter_tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.adapter-", dir=out.parent))
    merged = None
    try:
        # the adapter must be written before merging (merge_and_unload removes the LoRA layers)
        peft_model.save_pretrained(str(adapter_tmp))
        with atomic_dir(out) as tmp:
            if merge:
                merged = peft_model.merge_and_unload()
                save(merged, tokenizer, tmp, metadata={"recovery": to_jsonable(result), **(metadata or {})})
            shutil.move(str(adapter_tmp), str(tmp / "adapter"))
            (tmp / "recovery.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
    finally:
        shutil.rmtree(adapter_tmp, ignore_errors=True)
    return merged


def recover_isodose(model: nn.Module, tokenizer, mechanism: str | Mechanism, records: Sequence[Any],
                    reference: str | tuple[str, float] = "ketamine:3", epochs: float | None = None,
                    seq_len: int = 512, pad_to_max: bool = True, strict: bool = False, formula: str = "study",
                    **kwargs) -> RecoveryResult:
    """:func:`recover` with epochs solved from an isodose ``reference`` (``"ketamine:3"``: the reference
    mechanism's 3-epoch cost on this model and data is the budget), unless ``epochs`` overrides it.

    ``formula`` = ``study`` (``6·P·L·N·E``) or ``honest`` (``T·(2F + 6P)``, frozen base included); the solve is
    :func:`prunelab.recover.isodose.solve_isodose`. A budget below half an epoch of ``mechanism`` is clamped to
    1 epoch with a warning (``strict`` raises).
    """
    import warnings

    from prunelab.recover.isodose import check_formula, parse_reference, solve_isodose

    check_formula(formula)
    mech = get_mechanism(mechanism)
    ref_name, ref_epochs = parse_reference(reference) if isinstance(reference, str) else reference
    ref = get_mechanism(ref_name)
    n = len(records)
    if n == 0:
        raise PrunelabError("no training records given")
    tokens_per_epoch = None
    if not pad_to_max and formula == "honest":  # padding-free: the honest cost counts the real tokens
        loss_on = kwargs.get("loss_on", "all")
        tokens_per_epoch = sum(len(r["input_ids"]) for r in tokenize_records(tokenizer, records, seq_len=seq_len,
                                                                              pad_to_max=False, loss_on=loss_on))
    with warnings.catch_warnings():
        if not strict and epochs is None:
            warnings.simplefilter("always")
        else:  # an explicit epochs override needs no clamp warning
            warnings.simplefilter("ignore")
        sol = solve_isodose(formula, count_trainable_lora_params(model, ref), ref_epochs,
                            count_trainable_lora_params(model, mech), seq_len, n,
                            base_flops_per_token=base_forward_flops_per_token(model, seq_len),
                            tokens_per_epoch=tokens_per_epoch, strict=strict and epochs is None)
    if epochs is None:
        epochs = sol.epochs
    info = {"budget": sol.budget, "reference": f"{ref.name}:{ref_epochs:g}", "exact_epochs": sol.exact_epochs,
            "isodose_formula": formula}
    return recover(model, tokenizer, mech, records, epochs, seq_len=seq_len, pad_to_max=pad_to_max,
                   isodose=info, **kwargs)
