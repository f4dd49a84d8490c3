"""The feedback platform: a store for human (and AI) feedback, assignment of labeling tasks,
agreement and quality measures, Elo/Bradley-Terry ratings, and export to training records.

Modules: `db` (open the store, migrations), `tables`, `accounts` (labelers, passwords, tokens,
sessions), `items` (projects, prompts, tasks), `importer`, `assign`, `labels` (submission),
`quality`, `export`, `agreement`, `ratings`, `summary` (the `coachlm label stats` figures).
"""
