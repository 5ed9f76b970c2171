"""Data for OP4KSR: Real-ESRGAN degradations (``degradations``, presets in ``presets/``),
training datasets (``datasets``), three-stage curation (``curation``, ``quality``, ``vlm``,
``aesthetic``) and benchmark suites (``bench_suites``). See docs/DATA.md."""
