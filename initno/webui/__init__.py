"""The AUTOMATIC1111 WebUI glue: the only part of the extension that imports the host's `modules`.

- `args`: the argument table (UI, API, infotext, settings, X/Y/Z) — pure Python;
- `host`: reading the host's model, sampler, prompt and conditioning;
- `job`: one generation's InitNO work, its progress, faults and infotext;
- `ui`, `xyz`, `routes`: controls and settings, X/Y/Z axes, the extension's HTTP routes;
- `script`: the `scripts.Script` classes the host loads (through `scripts/initno.py`).
"""
