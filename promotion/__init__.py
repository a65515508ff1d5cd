"""People's judgements of policy versions, apart from HTTP: the evidence they give (blinded
cross-version rankings, one verdict per person and request), the sequential test that decides a
canary on it, the leaderboard, each version's serving health, and the raters' labelling queue.
The gateway serves it; the report and the demo read it."""
