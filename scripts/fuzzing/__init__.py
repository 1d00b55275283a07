"""The pieces of ``scripts/fuzz.py``: user-style modules (``models``), seeded cases (``cases``) and the checks a
case must pass (``checks``). ``scripts/fuzz.py`` runs them and writes the report."""
