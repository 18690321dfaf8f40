"""The report stage: one self-contained HTML page from the run's results.

- `inputs`: the report rule's input files, paired with the config's results (no paths are
  looked up here; torch- and matplotlib-free, the DAG uses its keys);
- `collect`: those files read into tables (`Results`), fingerprints checked;
- `deltas`, `tables`: the numbers the page states (paired differences, summaries);
- `style`, `figures`, `qualitative`, `axis`: what it draws;
- `sections`, `html`, `page`: the page (`page.build_report`).
"""
