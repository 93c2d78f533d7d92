"""``prunelab power``: minimum detectable accuracy difference and items needed, before spending compute.

A thin layer over :mod:`prunelab.stats` (Connor 1987 for the paired design, Fleiss et al. 2003 for two
independent arms). Example: ``prunelab power --n 200 --acc 0.3 --paired-discordance 0.2 --effect 3``.
"""

from __future__ import annotations

import json
import math

import typer
from typer.core import TyperCommand

from prunelab.cli._common import console
from prunelab.errors import PrunelabError

DEFAULT_EFFECTS = (1.0, 2.0, 3.0, 5.0, 10.0)


def _parse_effects(text: str | None) -> tuple[list[float], bool]:
    """``"3"`` or ``"1,2,5"`` -> effects in pp; the flag says whether the user chose them (then errors are errors)."""
    if text is None:
        return list(DEFAULT_EFFECTS), False
    effects = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise PrunelabError(f"--effect must be percentage points, e.g. 3 or 1,2,5; got {text!r}") from None
        if not (0.0 < value <= 100.0):
            raise PrunelabError(f"--effect must be between 0 and 100 percentage points, got {part.strip()}")
        effects.append(value)
    return effects, True


def power_cmd(
    n: int = typer.Option(..., "--n", help="Items evaluated (per model; per arm with --unpaired)."),
    acc: float = typer.Option(..., "--acc", help="Accuracy of the models, as a fraction in (0, 1), e.g. 0.3."),
    discordance: float = typer.Option(
        None, "--paired-discordance",
        help="Observed share of items exactly one of the two models gets right, in (0, 1]. "
             "Default: the binomial bound 2·acc·(1−acc) (independent errors; conservative)."),
    effect: str = typer.Option(None, "--effect",
                               help="Effect(s) in pp to size for, e.g. 3 or 1,2,5 (default 1,2,3,5,10)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Two-sided significance level."),
    power: float = typer.Option(0.8, "--power", help="Power (1 − β)."),
    unpaired: bool = typer.Option(False, "--unpaired", help="Two independent arms on different items (n per arm)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON to stdout instead of text."),
) -> None:
    """Minimum detectable difference (pp) at the given power and α, and the items needed for given effects."""
    from prunelab import stats

    # Validate everything before computing anything (one clear line per mistake).
    if n <= 0:
        raise PrunelabError(f"--n must be a positive number of items, got {n}")
    if not (0.0 < acc < 1.0):
        hint = " (a fraction: 0.3 means 30 %)" if 1.0 <= acc <= 100.0 else ""
        raise PrunelabError(f"--acc must be strictly between 0 and 1, got {acc:g}{hint}")
    if discordance is not None and not (0.0 < discordance <= 1.0):
        raise PrunelabError(f"--paired-discordance must be in (0, 1], got {discordance:g}")
    if unpaired and discordance is not None:
        raise PrunelabError("--paired-discordance describes a paired design; drop it or drop --unpaired")
    if not (0.0 < alpha < 1.0):
        raise PrunelabError(f"--alpha must be between 0 and 1, got {alpha:g}")
    if not (0.0 < power < 1.0):
        raise PrunelabError(f"--power must be between 0 and 1, got {power:g}")
    effects, chosen = _parse_effects(effect)

    if unpaired:
        psi = None
        psi_source = None
        mde = stats.mde_unpaired(n, acc, alpha=alpha, power=power)
        limit = 100.0 * 2.0 * min(acc, 1.0 - acc)
        sizer = lambda e: stats.n_needed_unpaired(e, acc, alpha=alpha, power=power)  # noqa: E731
        design = "unpaired (two independent arms; Fleiss, Levin & Paik 2003, ch. 4)"
    else:
        psi = discordance if discordance is not None else 2.0 * acc * (1.0 - acc)
        psi_source = "given" if discordance is not None else "binomial bound 2·acc·(1−acc), independent errors"
        mde = stats.mde_paired(n, acc, discordance, alpha=alpha, power=power)
        limit = 100.0 * psi
        sizer = lambda e: stats.n_needed(e, acc, discordance, alpha=alpha, power=power)  # noqa: E731
        design = "paired (McNemar; Connor 1987, p. 209)"

    rows = []
    for e in effects:
        if e > limit + 1e-12:
            if chosen:
                reason = (f"{limit:.3g} % discordant items" if not unpaired
                          else f"an accuracy range of ±{limit / 2:.3g} pp around {100 * acc:g} %")
                raise PrunelabError(f"an effect of {e:g} pp is impossible with {reason}")
            rows.append({"effect_pp": e, "n": None})
        else:
            rows.append({"effect_pp": e, "n": sizer(e)})

    result = {
        "design": "unpaired" if unpaired else "paired", "n": n, "acc": acc, "discordance": psi,
        "discordance_source": psi_source, "alpha": alpha, "power": power,
        "mde_pp": mde if math.isfinite(mde) else None,
        "n_needed": rows, "n_needed_per": "arm" if unpaired else "pair of evaluations on the same items",
    }
    if as_json:
        console.print_json(json.dumps(result))
        return
    per = "per arm" if unpaired else "items"
    console.print(f"design: {design}")
    console.print(f"n = {n} {per}, accuracy {100 * acc:g} %, α = {alpha:g} (two-sided), power {100 * power:g} %")
    if psi is not None:
        console.print(f"discordance ψ = {psi:.3g} ({psi_source})")
    if math.isfinite(mde):
        console.print(f"minimum detectable difference: [bold]{mde:.1f} pp[/]")
    else:
        console.print(f"minimum detectable difference: [bold]none[/] — {n} {per} cannot detect any difference "
                      "at this power")
    for row in rows:
        need = "impossible at this discordance" if row["n"] is None else f"{row['n']:,} {per}"
        console.print(f"  n needed for {row['effect_pp']:g} pp: {need}")


class _OneLineUsageErrors(TyperCommand):
    """Usage mistakes (unknown option, unparsable number, missing --n) as one line + exit 2, like value errors.

    typer prints its own usage errors as a multi-line box; re-raising them as PrunelabError lets
    ``prunelab.cli.main`` print the single ``error: ...`` line every other mistake gets.
    """

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except typer.TyperException as exc:
            # typer vendors click and exports no UsageError; usage errors are the TyperExceptions with exit code 2
            if getattr(exc, "exit_code", None) != 2 or not hasattr(exc, "format_message"):
                raise
            raise PrunelabError(f"{exc.format_message()} (see prunelab power --help)") from None


def register(app: typer.Typer) -> None:
    app.command("power", cls=_OneLineUsageErrors)(power_cmd)
