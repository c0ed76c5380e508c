"""LLM judges: backends, a judging run, which pairs to judge, combined verdicts, rankings and judge figures."""
