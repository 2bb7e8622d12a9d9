"""The rank command: which scans to label first, as the Annotate dock ranks them (each scan by
the model made for it, most uncertain first, out-of-distribution scans after the others)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from napari_scan_classifier.cli._shared import AUTO_HELP, _print_table
from napari_scan_classifier.cli.train import _bar, _tenth
from napari_scan_classifier.errors import ScanClassifierError

if TYPE_CHECKING:
    from napari_scan_classifier.active_learning import Ranked, Ranking, Unranked

# active_learning.MEASURES, spelled out: importing it loads TensorFlow, and --help must not
MEASURES = ("entropy", "mutual_information", "margin")


def _add_rank_command(commands: argparse._SubParsersAction) -> None:
    rank = commands.add_parser(
        "rank", help="which scans to label first: the most uncertain first, per model"
    )
    rank.add_argument(
        "paths", nargs="+", metavar="PATH", help="scan file, DICOM folder or folder of NIfTI"
    )
    rank.add_argument("--model", default="auto", help=AUTO_HELP)
    rank.add_argument(
        "--measure",
        choices=MEASURES,
        default="entropy",
        help="entropy: all uncertainty; mutual_information: the model's own (BALD); margin: "
        "closeness to the decision",
    )
    rank.add_argument("--passes", type=_at_least_one, default=10, help="MC-dropout passes")
    rank.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rank.set_defaults(run=_rank_command)


def _rank_command(args: argparse.Namespace) -> int:
    ranking = _ranking(args)
    if args.json:
        print(json.dumps(_ranking_json(ranking), indent=2))
    else:
        _print_ranking(ranking)
    if not ranking.ranked and not ranking.uncovered:
        raise ScanClassifierError("no scan could be ranked (the reasons are above)")
    return 0


def _ranking(args: argparse.Namespace) -> Ranking:
    from napari_scan_classifier.active_learning import (
        Ranking,
        rank_by_chosen_model,
        rank_by_uncertainty,
    )
    from napari_scan_classifier.choice import is_auto
    from napari_scan_classifier.results import resolve_bundle

    options: dict[str, Any] = {
        "measure": args.measure,
        "passes": args.passes,
        "progress": _Progress(),
        "on_skip": lambda reason: print(f"skipped {reason}", file=sys.stderr, flush=True),
    }
    if is_auto(args.model):
        return rank_by_chosen_model(args.paths, **options)
    return Ranking(rank_by_uncertainty(args.paths, resolve_bundle(args.model), **options), [])


class _Progress:
    """Scans done: a bar on a terminal, a plain line at every tenth otherwise."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, done: int, total: int, message: str) -> None:
        if not sys.stderr.isatty():
            if done and _tenth(done, total):
                print(f"ranking: {done} of {total} inputs read", file=sys.stderr, flush=True)
            return
        if self.bar is None:
            self.bar = _bar(total, "ranking", "input")
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()


def _print_ranking(ranking: Ranking) -> None:
    header = ("rank", "model", "score", "predicted", "scan")
    rows = [_row(ranked) for ranked in ranking.ranked]
    _print_table(header, rows, [max(len(r[i]) for r in [header, *rows]) for i in range(4)])
    for ranked in ranking.ranked:
        for reason in ranked.ood_reasons:
            print(f"out of distribution: {ranked.name}: {reason}")
    for unranked in ranking.uncovered:
        print(f"not ranked: {unranked.name}: {unranked.reason} ({unranked.how})")


def _row(ranked: Ranked) -> tuple[str, ...]:
    p = ranked.probabilities[ranked.predicted_class]
    outside = ", out of distribution" if not ranked.in_distribution else ""
    return (
        str(ranked.rank),
        ranked.model,
        f"{ranked.score:.3f}",
        f"{ranked.predicted_class} ({p:.2f}){outside}",
        ranked.name,
    )


def _ranking_json(ranking: Ranking) -> dict[str, list[dict[str, Any]]]:
    return {
        "ranked": [_ranked_json(ranked) for ranked in ranking.ranked],
        "not_ranked": [_unranked_json(unranked) for unranked in ranking.uncovered],
    }


def _ranked_json(ranked: Ranked) -> dict[str, Any]:
    return {
        "rank": ranked.rank,
        "model": ranked.model,
        "model_choice": ranked.choice,
        "measure": ranked.measure,
        "score": ranked.score,
        "scan": ranked.name,
        "series_key": ranked.series_key,
        "predicted_class": ranked.predicted_class,
        "probabilities": ranked.probabilities,
        "in_distribution": ranked.in_distribution,
        "ood_reasons": list(ranked.ood_reasons),
    }


def _unranked_json(unranked: Unranked) -> dict[str, Any]:
    return {
        "scan": unranked.name,
        "series_key": unranked.series_key,
        "reason": unranked.reason,
        "how": unranked.how,
    }


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return int(text)
