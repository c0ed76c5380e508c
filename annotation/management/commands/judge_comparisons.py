from django.core.management.base import BaseCommand, CommandError

from annotation.documents.models import TitleOnly
from annotation.jobs.lifecycle import follow_in
from annotation.models import PAIRINGS, Campaign, Judge, Sample, Split
from annotation.start import start_judging


def _named(model, name: str, what: str):
    found = model.objects.filter(name=name).first()
    if found is None:
        names = ", ".join(model.objects.values_list("name", flat=True)[:20]) or "none yet"
        raise CommandError(f"no {what} named {name!r} (known: {names})")
    return found


class Command(BaseCommand):
    help = ("Judge comparisons in both presentation orders in a Celery worker (queue 'judging') and show its "
            "progress. Verdicts already stored are never asked again.")

    def add_arguments(self, parser):
        parser.add_argument("--judge", required=True, help="Judge name (see the admin).")
        parser.add_argument("--pairing", choices=PAIRINGS, default="tournament",
                            help="tournament (default): knockout per sample; all: every pair of a sample's "
                                 "pairable profiles; active: add the pairs judges are least sure about to "
                                 "--campaign; existing: judge comparisons already there (--campaign's, or all).")
        parser.add_argument("--campaign", help="Campaign the new pairs go to (tournament/all/active) or the "
                                               "comparisons come from (existing).")
        parser.add_argument("--split", choices=Split.values, help="Only samples of this split.")
        parser.add_argument("--limit", type=int, help="At most N samples (tournament/all), N pairs added "
                                                      "(active) or N comparisons (existing).")
        parser.add_argument("--no-wait", action="store_true", help="Queue the job and return.")

    def handle(self, *args, **options):
        judge = _named(Judge, options["judge"], "judge")
        campaign = _named(Campaign, options["campaign"], "campaign") if options["campaign"] else None
        if options["pairing"] == "active" and campaign is None:
            raise CommandError("--pairing active adds the most uncertain pairs to a campaign: give --campaign")
        samples = Sample.objects.filter(split=options["split"]) if options["split"] else None
        try:
            job = start_judging(judge, options["pairing"], samples=samples, campaign=campaign, limit=options["limit"])
        except TitleOnly as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Queued job #{job.pk} ({options['pairing']}) for judge {judge.name} on the 'judging' queue.")
        follow_in(self, job, options["no_wait"])
