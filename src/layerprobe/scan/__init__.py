"""Stage 3b, the layer scan: closed-form ridge probes of every layer fitted while the model runs,
no store written (`run`, `ridge`), its settings (`settings`), what it costs before it runs
(`cost`) and how its ranking agrees with the trained probes' (`agreement`)."""
