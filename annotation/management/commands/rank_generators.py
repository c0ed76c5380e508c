from django.core.management.base import BaseCommand, CommandError

from annotation.judging.rankings import judge_matches, panel_matches, rank_generators
from annotation.models import Campaign, Comparison, Judge, JudgePanel

from .judge_comparisons import _named


class Command(BaseCommand):
    help = ("Rank generators from a judge's (or a panel's) combined verdicts: Elo and Bradley–Terry with "
            "bootstrap 95% intervals; ties and order flips count half.")

    def add_arguments(self, parser):
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--judge", help="Judge name.")
        who.add_argument("--panel", help="Judge panel name (its consensus verdicts).")
        parser.add_argument("--campaign", help="Only this campaign's comparisons (default: the whole pool).")
        parser.add_argument("--k", type=float, default=16, help="Elo K factor (default 16).")
        parser.add_argument("--boot", type=int, default=1000, help="Bootstrap resamples (default 1000).")

    def handle(self, *args, **options):
        campaign = _named(Campaign, options["campaign"], "campaign") if options["campaign"] else None
        comparisons = campaign.comparisons.all() if campaign else Comparison.objects.all()
        if options["judge"]:
            matches = judge_matches(_named(Judge, options["judge"], "judge"), comparisons)
        else:
            matches = panel_matches(_named(JudgePanel, options["panel"], "panel"), comparisons)
        if not matches:
            raise CommandError("no decided comparisons between different generators in this scope")
        ranks = rank_generators(matches, k=options["k"], n_boot=options["boot"])
        self.stdout.write(f"{len(matches)} matches; Elo K={options['k']:g}; 95% bootstrap intervals "
                          f"({options['boot']} resamples)")
        self.stdout.write(f"{'generator':<28} {'BT':>7} {'95% CI':>17} {'Elo':>7} {'95% CI':>17} {'score':>9}")
        for r in ranks:
            bt, elo = r.bradley_terry, r.elo
            self.stdout.write(f"{r.name[:28]:<28} {bt.value:7.2f} [{bt.low:6.2f}, {bt.high:6.2f}] "
                              f"{elo.value:7.0f} [{elo.low:6.0f}, {elo.high:6.0f}] {r.wins:g}/{r.matches}")
