"""relapse() and chronic() on tiny models, with injected tune/eval functions (no training, seconds)."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.stress import chronic, decoder_linears, measure_sparsity, relapse
from tests.tiny import tiny_model, tiny_tokenizer


# ----- relapse --------------------------------------------------------------------------------------------
def test_relapse_report_is_exact_per_layer(family):
    model = tiny_model(family)
    rep = relapse(model, 0.3)
    assert rep.model is model and not rep.merged_adapter
    assert rep.max_deviation <= 1e-3
    for l in rep.layers:
        assert l.zeros_after == round(0.3 * l.numel)
    total = sum(l.numel for l in rep.layers)
    assert rep.overall_sparsity == pytest.approx(sum(l.zeros_after for l in rep.layers) / total)
    assert "| model.layers.0." in rep.to_markdown()


def test_relapse_merges_a_peft_adapter_first():
    from peft import LoraConfig, PeftModel, get_peft_model

    base = tiny_model("llama")
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_()
    q_merged = (peft.base_model.model.model.layers[0].self_attn.q_proj.get_delta_weight("default")
                + peft.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight).detach().clone()
    rep = relapse(peft, 0.3)
    assert rep.merged_adapter and not isinstance(rep.model, PeftModel)
    assert not any("lora" in n for n, _ in rep.model.named_parameters())
    q = rep.model.model.layers[0].self_attn.q_proj.weight
    # Pruned on the merged weights: the kept entries are the merged values, the 30% smallest |merged| are zero.
    kept = q != 0
    assert torch.allclose(q[kept], q_merged[kept], atol=1e-6)
    assert q_merged.abs()[~kept].max() <= q_merged.abs()[kept].min()
    assert rep.max_deviation <= 1e-3


def test_relapse_with_eval_fn_reports_drop():
    model = tiny_model("llama")

    def eval_fn(m, tok):
        s = 100 * (1 - sum(l.zeros_after for l in measure_sparsity(m)) / sum(l.numel for l in measure_sparsity(m)))
        return {"arc_easy_gen": s, "lambada_gen": s / 2, "composite": 0.75 * s}

    rep = relapse(model, 0.3, eval_fn=eval_fn)
    assert rep.scores_before["composite"] == pytest.approx(75.0)
    assert rep.scores_after["composite"] == pytest.approx(0.75 * 100 * (1 - rep.overall_sparsity))
    assert rep.relapse_drop == pytest.approx(75.0 - rep.scores_after["composite"])


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.2, float("nan")])
def test_relapse_bad_fraction(fraction):
    model = tiny_model("llama")
    before = model.model.layers[0].mlp.up_proj.weight.clone()
    with pytest.raises(PrunelabError, match="fraction"):
        relapse(model, fraction)
    assert torch.equal(before, model.model.layers[0].mlp.up_proj.weight)


# ----- chronic --------------------------------------------------------------------------------------------
class FakeTune:
    """Stands in for a merged LoRA tune: densifies every weight (as a merged ΔW would) and reports a loss."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, tokenizer, mechanism, records, epochs):
        lin = decoder_linears(model)
        # at call time the cycle's pruning has happened: record the sparsity the tune saw
        z = sum(int((m.weight == 0).sum()) for m in lin.values()) / sum(m.weight.numel() for m in lin.values())
        self.calls.append(dict(mechanism=mechanism.name, n=len(records), epochs=epochs, sparsity=z))
        with torch.no_grad():
            for m in lin.values():
                m.weight.add_(1e-3)
        return model, 1.0 / len(self.calls)


def sparsity_eval(model, tokenizer):
    s = measure_sparsity(model)
    dense = 100 * (1 - sum(l.zeros_after for l in s) / sum(l.numel for l in s))
    return {"arc_easy_gen": dense, "lambada_gen": dense / 2}


RECORDS = [{"instruction": f"say {i}", "context": "", "response": str(i)} for i in range(5)]


def test_chronic_cycle_logic_with_injected_fns(tmp_path):
    model = tiny_model("llama")
    tune = FakeTune()
    rep = chronic(model, tiny_tokenizer(), "ssri", cycles=3, step=0.2, maintenance_epochs=2, records=RECORDS,
                  eval_fn=sparsity_eval, tune_fn=tune, progress=False)
    assert [r.cycle for r in rep.rows] == [0, 1, 2, 3]
    assert [r.target_sparsity for r in rep.rows] == pytest.approx([0.0, 0.2, 0.4, 0.6])
    # the tune runs after pruning, with the same mechanism, the records and the maintenance epochs
    assert [c["sparsity"] for c in tune.calls] == pytest.approx([0.2, 0.4, 0.6], abs=1e-3)
    assert all(c["mechanism"] == "ssri" and c["n"] == 5 and c["epochs"] == 2 for c in tune.calls)
    # the tune densified everything; the mask re-application put the zeros back exactly
    for r in rep.rows[1:]:
        assert abs(r.sparsity - r.target_sparsity) <= 1e-3
        assert abs(r.min_layer_sparsity - r.target_sparsity) <= 1e-3
        assert abs(r.max_layer_sparsity - r.target_sparsity) <= 1e-3
    assert [r.loss for r in rep.rows] == [None, 1.0, 0.5, pytest.approx(1 / 3)]
    assert rep.rows[0].scores["arc_easy_gen"] == 100.0
    assert rep.primary == "arc_easy_gen"
    assert rep.decline["arc_easy_gen"] == pytest.approx(rep.rows[0].scores["arc_easy_gen"]
                                                        - rep.rows[-1].scores["arc_easy_gen"])
    assert rep.decline["arc_easy_gen"] == pytest.approx(100 * rep.rows[-1].sparsity)
    assert rep.model is model
    assert all(abs(l.sparsity - 0.6) <= 1e-3 for l in measure_sparsity(model))

    out = rep.write(tmp_path / "chronic")
    files = sorted(p.name for p in out.iterdir() if p.name != ".prunelab-output.json")  # + the output manifest
    assert files == ["chronic.csv", "chronic.json", "chronic.md", "chronic.png"]
    assert (out / "chronic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "chronic.json").read_text())
    assert len(data["rows"]) == 4 and data["mechanism"] == "ssri"
    rows = list(csv.DictReader(io.StringIO((out / "chronic.csv").read_text())))
    assert [int(r["cycle"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[2]["target_sparsity"]) == pytest.approx(0.4)
    md = (out / "chronic.md").read_text()
    assert md.count("\n| ") == 5  # header + 4 cycles


def test_chronic_adds_nothing_but_cycles_step(tmp_path):
    # step 0.1 × 3: exactly 10/20/30% of the original count in every layer
    model = tiny_model("qwen2")
    rep = chronic(model, None, "ketamine", cycles=3, step=0.1, maintenance_epochs=1, records=RECORDS,
                  eval_fn=sparsity_eval, tune_fn=FakeTune(), progress=False)
    assert [round(r.sparsity, 3) for r in rep.rows] == [0.0, 0.1, 0.2, 0.3]


@pytest.mark.parametrize("kw, message", [
    (dict(cycles=0), "cycles"),
    (dict(cycles=-2), "cycles"),
    (dict(cycles=10, step=0.1), "100%"),
    (dict(cycles=4, step=0.3), "100%"),
    (dict(step=0.0), "step"),
    (dict(mechanism="prozac"), "prozac"),
    (dict(maintenance_epochs=0), "epochs"),
    (dict(records=[]), "records"),
])
def test_chronic_bad_input_before_any_work(kw, message):
    calls = []

    def eval_fn(m, t):
        calls.append("eval")
        return {"x": 1.0}

    def tune_fn(*a):
        calls.append("tune")
        return a[0], 0.0

    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = dict(mechanism="ketamine", cycles=3, step=0.1, maintenance_epochs=3, records=RECORDS)
    args.update(kw)
    with pytest.raises(PrunelabError, match=message):
        chronic(model, None, args.pop("mechanism"), eval_fn=eval_fn, tune_fn=tune_fn, progress=False, **args)
    assert calls == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_chronic_unknown_task_fails_before_work():
    with pytest.raises(PrunelabError, match="no_such_task"):
        chronic(tiny_model("llama"), tiny_tokenizer(), "ssri", cycles=1, records=RECORDS, tasks=["no_such_task"],
                tune_fn=lambda *a: (_ for _ in ()).throw(AssertionError("tuned")), progress=False)
