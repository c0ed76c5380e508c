"""Small hand-built worlds of samples, profiles, comparisons, verdicts and votes for agreement/export tests."""

from __future__ import annotations

import itertools

from annotation.models import (
    Assignment, Campaign, CampaignItem, Comparison, Document, Generator, Judge, JudgeVerdict, Profile, Sample,
    SampleDocument, Vote,
)

_ids = itertools.count(1)


def profile_text(domain: str, *names: str) -> str:
    lines = [f'Domain: "{domain}"', "", "Competencies:"]
    lines += [f"- {name}: The abstracts show {name.lower()} applied to real data." for name in names]
    return "\n".join(lines)


class World:
    """Creates rows with sensible defaults; every method returns the row it made."""

    def sample(self, name: str | None = None, documents: int = 2, split: str = "train") -> Sample:
        n = next(_ids)
        sample = Sample.objects.create(name=name or f"sample-{n}", split=split)
        for position in range(documents):
            doc = Document.objects.create(
                external_id=f"doc-{n}-{position}", title=f"Title {n}.{position}",
                abstract=f"Abstract {n}.{position}: we study proteins with <b>deep</b> learning.", content_hash="x",
            )
            SampleDocument.objects.create(sample=sample, document=doc, position=position)
        return sample

    def generator(self, name: str) -> Generator:
        return Generator.objects.get_or_create(name=name)[0]

    def profile(self, sample: Sample, generator: str, text: str | None = None, valid: bool = True) -> Profile:
        index = Profile.objects.filter(sample=sample, generator__name=generator).count()
        return Profile.objects.create(
            sample=sample, generator=self.generator(generator), candidate_index=index,
            raw_text=text or profile_text(f"{generator} domain {next(_ids)}", "Protein folding", "Deep learning",
                                          "Statistics"),
            is_valid=valid, invalid_reason="" if valid else "too few competencies",
        )

    def comparison(self, sample: Sample | None = None, generator_a: str = "base", generator_b: str = "tuned",
                   text_a: str | None = None, text_b: str | None = None) -> Comparison:
        sample = sample or self.sample()
        a = self.profile(sample, generator_a, text_a)
        b = self.profile(sample, generator_b, text_b)
        return Comparison.objects.create(sample=sample, profile_a=a, profile_b=b)

    def judge(self, name: str = "judge-1") -> Judge:
        return Judge.objects.get_or_create(name=name, defaults={"model": "m"})[0]

    def verdicts(self, comparison: Comparison, judge: Judge | str, ab: str | None, ba: str | None) -> None:
        """Canonical labels per order; None stores an invalid verdict."""
        judge = self.judge(judge) if isinstance(judge, str) else judge
        for order, label in (("ab", ab), ("ba", ba)):
            JudgeVerdict.objects.create(
                comparison=comparison, judge=judge, order=order, preferred=label or "", is_valid=label is not None,
                raw_text="{}" if label else "garbage", error="" if label else "no JSON object",
            )

    def campaign(self, name: str = "campaign", judge: Judge | None = None, display: str = "hidden") -> Campaign:
        return Campaign.objects.get_or_create(name=name, defaults={"judge": judge, "judge_display": display})[0]

    def vote(self, campaign: Campaign, comparison: Comparison, expert, choice: str, first_choice: str | None = None,
             seconds: float | None = 30.0, gold: str = "") -> Vote:
        item, _ = CampaignItem.objects.get_or_create(campaign=campaign, comparison=comparison)
        if gold:
            item.gold_answer = gold
            item.save()
        assignment = Assignment.objects.create(item=item, expert=expert)
        first = first_choice or choice
        return Vote.objects.create(
            assignment=assignment, expert=expert, comparison=comparison, campaign=assignment.item.campaign,
            choice=choice, first_choice=first,
            revised_after_reveal=first != choice, seconds_spent=seconds,
        )
