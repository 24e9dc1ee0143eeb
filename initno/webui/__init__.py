"""The WebUI glue: the only part of the extension that imports the host's packages (`modules`, `backend`).

- `hosts`: one adapter per host (A1111, Forge 2, reForge) behind one interface, chosen by `hosts.host_of`;
- `checks`, `conditioning`, `passes`: what InitNO reads from the host for a batch, the same on every host;
- `args`: the argument table (UI, API, infotext, settings, X/Y/Z) and each argument's checks — pure Python;
- `job`: one generation's InitNO work, in order, with `lookahead` (Fast's choice), `calibration` (the
  thresholds learnt per model), `infotext`, `progress`, `guided_sampling`, `sampler_hook` and `gallery` for
  its concerns, and `faults` for every message to the user;
- `ui`, `xyz`, `routes`: controls and settings, X/Y/Z axes, the extension's HTTP routes;
- `script`: the `scripts.Script` classes the host loads (through `scripts/initno.py`).
"""
