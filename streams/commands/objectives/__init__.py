"""Objective tools above the stages: comparing two versions' verdicts and re-judging stored
candidate sets under a new version (`prefstream objective compare`, `prefstream rejudge`)."""
