"""Recovery training throughput: prunelab's LoRA step vs a plain transformers + PEFT Trainer loop (issue 6).

On smollm2-135m pruned 40 % (uniform width pruning, ``maw``), the same Dolly batch (``--samples`` × ``--seq-len``
tokens, padded, batch 4) is trained for ``--epochs`` with the same LoRA mechanism, seed and learning rate:

* **plain**: ``peft.get_peft_model`` + ``transformers.Trainer`` + ``datasets.map`` over
  ``tokenizer(prompt + response + eos, padding="max_length")`` with labels = ids where the attention mask is 1
  — what one writes by hand (the stock ``DataCollatorForLanguageModeling`` would also mask the real final EOS,
  because SmolLM2 pads with EOS, and the curves would differ by that token);
* **prunelab**: :func:`prunelab.recover.recover` (the path ``prunelab recover`` uses).

Both are timed in this run (machine noise hits both); the ratio prunelab/plain of training tokens/s is
printed, and the two loss curves are overlaid in a PNG (they must match within noise: same data, order, init).
The prunelab run is also the CPU-sized recovery run: WikiText-2 perplexity (a slice) and ARC-Easy (a seeded
subset) are measured before and after it.

    python benchmarks/train_throughput.py [--samples 64 --seq-len 128 --epochs 2 --out /tmp/prunelab-bench]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def plain_peft_trainer(model, tokenizer, records, mechanism, seq_len, epochs, batch_size, grad_accum, seed):
    """The hand-written baseline: PEFT + Trainer + the stock causal-LM collator."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator, set_seed
    from transformers.trainer_callback import PrinterCallback

    from prunelab.data import format_example

    texts = [p + r + tokenizer.eos_token for p, r in (format_example(rec) for rec in records)]
    def encode(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=seq_len, padding="max_length")
        # labels from the attention mask: DataCollatorForLanguageModeling masks every pad-id token, and
        # SmolLM2 pads with its EOS, so it would also drop the real trailing EOS that prunelab trains on.
        enc["labels"] = [[t if m else -100 for t, m in zip(ids, mask)]
                         for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
        return enc

    ds = Dataset.from_dict({"text": texts}).map(encode, batched=True, remove_columns=["text"])
    set_seed(seed)
    cfg = LoraConfig(r=mechanism.r, lora_alpha=mechanism.alpha, lora_dropout=mechanism.dropout,
                     target_modules=mechanism.target_modules(model), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    args = TrainingArguments(output_dir="/tmp/prunelab-plain-trainer", per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=grad_accum, learning_rate=mechanism.lr,
                             num_train_epochs=epochs, warmup_steps=0.1, lr_scheduler_type="linear",
                             optim="adamw_torch", seed=seed, data_seed=seed, logging_steps=1, save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True, include_num_input_tokens_seen="all")
    trainer = Trainer(model=peft_model, args=args, train_dataset=ds,
                      data_collator=default_data_collator)
    trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"losses": losses, "tokens": int(trainer.state.num_input_tokens_seen), "seconds": seconds,
            "tokens_per_second": trainer.state.num_input_tokens_seen / seconds}


def evaluate_slice(model, tokenizer, ppl_windows, ppl_seq_len, arc_limit):
    from prunelab.data import load_wikitext2_text
    from prunelab.evaluate.perplexity import perplexity

    out = {"wikitext2_ppl": perplexity(model, tokenizer, load_wikitext2_text(), seq_len=ppl_seq_len,
                                       max_windows=ppl_windows).perplexity}
    if arc_limit:
        try:
            from prunelab.evaluate import evaluate
        except ImportError:  # evaluation stage not present in this build
            return out
        rep = evaluate(model, tokenizer, ["arc_easy"], limit=arc_limit, seed=0)
        out["arc_easy_acc"] = rep.score("arc_easy")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.4, help="width-pruning ratio (MLP neurons removed)")
    ap.add_argument("--mechanism", default="ketamine")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1, help="1 gives a loss point per micro-batch")
    ap.add_argument("--ppl-windows", type=int, default=8)
    ap.add_argument("--ppl-seq-len", type=int, default=256)
    ap.add_argument("--arc-limit", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="/tmp/prunelab-bench", help="folder for the PNG and JSON")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from prunelab.atomic import write_json
    from prunelab.cli._common import quiet_libraries
    from prunelab.data import dolly_split
    from prunelab.models import count_parameters, load
    from prunelab.prune.width import prune_width
    from prunelab.recover import count_trainable_lora_params, get_mechanism, recover

    quiet_libraries()
    os.makedirs(args.out, exist_ok=True)
    lm = load(args.model)
    rep = prune_width(lm.model, lm.tokenizer, criterion="maw", ratio=args.ratio, progress=False)
    model, tok = lm.model, lm.tokenizer
    mech = get_mechanism(args.mechanism)
    records = dolly_split(n_train=args.samples, n_held_out=100, seed=args.seed).train
    print(f"{args.model} pruned {args.ratio:.0%} (maw): {rep.params_before / 1e6:.1f}M → "
          f"{count_parameters(model).total / 1e6:.1f}M params; {mech.name} r{mech.r} "
          f"({count_trainable_lora_params(model, mech) / 1e6:.2f}M trainable); {args.samples} samples × "
          f"{args.seq_len} tokens × {args.epochs:g} epochs, batch {args.batch_size} × accum {args.grad_accum}, "
          f"torch threads {torch.get_num_threads()}", flush=True)

    before = evaluate_slice(model, tok, args.ppl_windows, args.ppl_seq_len, args.arc_limit)
    print(f"before recovery: {before}", flush=True)

    plain = plain_peft_trainer(copy.deepcopy(model), tok, records, mech, args.seq_len, args.epochs,
                               args.batch_size, args.grad_accum, args.seed)
    print(f"plain PEFT+Trainer: {plain['tokens']:,} tokens in {plain['seconds']:.1f}s = "
          f"{plain['tokens_per_second']:.1f} tokens/s; loss {plain['losses'][0]:.4f} → {plain['losses'][-1]:.4f}",
          flush=True)
    res = recover(model, tok, mech, records, args.epochs, seq_len=args.seq_len, batch_size=args.batch_size,
                  grad_accum=args.grad_accum, seed=args.seed, progress=False)
    ours = [h["loss"] for h in res.loss_history]
    print(f"prunelab recover:   {res.tokens:,} tokens in {res.seconds:.1f}s = {res.tokens_per_second:.1f} tokens/s; "
          f"loss {ours[0]:.4f} → {ours[-1]:.4f}", flush=True)
    after = evaluate_slice(res.model, tok, args.ppl_windows, args.ppl_seq_len, args.arc_limit)
    print(f"after recovery:  {after}", flush=True)

    n = min(len(ours), len(plain["losses"]))
    diffs = [abs(a - b) for a, b in zip(ours[:n], plain["losses"][:n])]
    k = max(1, n // 4)
    first, last = sum(ours[:k]) / k, sum(ours[-k:]) / k
    ratio = res.tokens_per_second / plain["tokens_per_second"]
    print(f"throughput prunelab/plain = {ratio:.2f}×; loss curves: max |Δ| {max(diffs):.4f}, "
          f"mean |Δ| {sum(diffs) / n:.4f} over {n} steps; mean loss first quarter {first:.4f} → last quarter {last:.4f}")

    from prunelab.plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(plain["losses"]) + 1), plain["losses"], label=f"plain PEFT+Trainer ({plain['tokens_per_second']:.0f} tok/s)")
    ax.plot(range(1, len(ours) + 1), ours, "--", label=f"prunelab recover ({res.tokens_per_second:.0f} tok/s)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{args.model} −{args.ratio:.0%}, {mech.name} r{mech.r}, {args.samples}×{args.seq_len}")
    ax.legend()
    fig.tight_layout()
    png = os.path.join(args.out, "train_throughput_loss.png")
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")
    write_json(os.path.join(args.out, "train_throughput.json"), {
        "args": vars(args), "plain": plain, "prunelab": {"losses": ours, "tokens": res.tokens, "seconds": res.seconds,
        "tokens_per_second": res.tokens_per_second, "flops": res.flops, "honest_flops": res.honest_flops},
        "throughput_ratio": ratio, "loss_max_abs_diff": max(diffs), "before": before, "after": after})
    return 0


if __name__ == "__main__":
    sys.exit(main())
