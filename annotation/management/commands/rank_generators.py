import csv
import json

from django.core.management.base import BaseCommand, CommandError

from annotation.agreement import figures
from annotation.judging.rankings import ELO_K, panel_matches, rank_generators
from annotation.models import Campaign, Comparison, Generator, Judge, JudgePanel

from .judge_comparisons import _named


class Command(BaseCommand):
    help = ("Rank generators — or groups of them by an attribute such as model or method — from the experts' votes, "
            "a judge's or a panel's verdicts: Bradley–Terry and Elo with bootstrap 95% intervals; ties and order flips "
            "count half. The same numbers as the agreement dashboard for the same campaign and grouping.")

    def add_arguments(self, parser):
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--experts", action="store_true", help="The experts' votes (first choices).")
        who.add_argument("--judge", help="Judge name.")
        who.add_argument("--panel", help="Judge panel name (its consensus verdicts).")
        parser.add_argument("--campaign", help="Only this campaign's comparisons (default: everything).")
        parser.add_argument("--group-by", default="", help="A generator attribute (model, method, …) to rank by.")
        parser.add_argument("--implied", action="store_true",
                            help="Experts: also count the preferences their imported tournaments imply.")
        parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
        parser.add_argument("--k", type=float, default=ELO_K, help=f"Elo K factor (default {ELO_K:g}).")
        parser.add_argument("--boot", type=int, default=figures.RANKING_BOOT,
                            help=f"Bootstrap resamples (default {figures.RANKING_BOOT}, as on the dashboard).")

    def handle(self, *args, **options):
        campaign = _named(Campaign, options["campaign"], "campaign") if options["campaign"] else None
        group_by = options["group_by"] or None
        if options["implied"] and not options["experts"]:
            raise CommandError("--implied counts the preferences of experts' tournaments: use it with --experts")
        source, matches, counted = self._matches(options, campaign, group_by)
        if not matches.matches:
            raise CommandError(f"no decided comparisons between different {group_by or 'generator'}s in this scope"
                               + (f" ({counted})" if counted else ""))
        ranks = rank_generators(matches.matches, k=options["k"], n_boot=options["boot"])
        meta = {"source": source, "campaign": campaign.name if campaign else None, "group_by": group_by,
                "matches": len(matches.matches), "counted": counted, "k": options["k"], "boot": options["boot"]}
        {"table": self._table, "csv": self._csv, "json": self._json}[options["format"]](ranks, meta)

    def _matches(self, options, campaign, group_by) -> tuple[str, figures.MatchSet, str]:
        if options["panel"]:
            panel = _named(JudgePanel, options["panel"], "panel")
            comparisons = campaign.comparisons.all() if campaign else Comparison.objects.all()
            matches = _grouped(panel_matches(panel, comparisons), group_by)
            return f"panel {panel.name}", matches, figures.counted_text(matches, "panel verdict", group_by)
        labels = figures.gather(campaign)
        if options["experts"]:
            matches = figures.expert_matches(labels, group_by, options["implied"])
            return "experts", matches, figures.counted_text(matches, "expert vote", group_by, labels.votes_on_invalid)
        judge = _named(Judge, options["judge"], "judge")
        matches = figures.judge_matches(labels, judge.pk, group_by)
        return f"judge {judge.name}", matches, figures.counted_text(matches, "judge verdict", group_by)

    def _table(self, ranks, meta) -> None:
        self.stdout.write(f"{meta['source']}: {meta['matches']} matches — {meta['counted']}")
        self.stdout.write(f"Elo K={meta['k']:g}; 95% bootstrap intervals ({meta['boot']} resamples)")
        label = meta["group_by"] or "generator"
        self.stdout.write(f"{label:<28} {'BT':>7} {'95% CI':>17} {'Elo':>7} {'95% CI':>17} {'score':>9}")
        for r in ranks:
            bt, elo = r.bradley_terry, r.elo
            self.stdout.write(f"{str(r.name)[:28]:<28} {bt.value:7.2f} [{bt.low:6.2f}, {bt.high:6.2f}] "
                              f"{elo.value:7.0f} [{elo.low:6.0f}, {elo.high:6.0f}] {r.wins:g}/{r.matches}")

    def _csv(self, ranks, meta) -> None:
        writer = csv.writer(self.stdout)
        writer.writerow(figures.RANKING_CSV_HEADER)
        writer.writerows(figures.ranking_csv_rows(ranks, meta["source"], meta["group_by"]))

    def _json(self, ranks, meta) -> None:
        self.stdout.write(json.dumps({**meta, "rankings": [figures.ranking_dict(r) for r in ranks]}, indent=2,
                                     ensure_ascii=False))


def _grouped(matches, group_by) -> figures.MatchSet:
    """A panel's generator-name matches regrouped by an attribute."""
    if not group_by:
        return figures.MatchSet([figures.oriented(*m) for m in matches], total=len(matches))
    attributes = dict(Generator.objects.values_list("name", "attributes"))
    grouped, same = [], 0
    for x, y, score in matches:
        gx, gy = (figures.group_of(g, attributes.get(g) or {}, group_by) for g in (x, y))
        if gx == gy:
            same += 1
        else:
            grouped.append(figures.oriented(gx, gy, score))
    return figures.MatchSet(grouped, same, total=len(grouped))
