"""Mirrors modules/script_callbacks.py: the callbacks the extension registers, and how the host calls them."""

from __future__ import annotations

from collections import defaultdict

from modules import errors

callback_map: dict[str, list] = defaultdict(list)


def _add(kind, fn, name=None):
    callback_map[kind].append((fn, name))


def on_ui_settings(fn, *, name=None):
    _add("callbacks_ui_settings", fn, name)


def on_before_ui(fn, *, name=None):
    _add("callbacks_before_ui", fn, name)


def on_app_started(fn, *, name=None):
    _add("callbacks_app_started", fn, name)


def _run(kind, *args):
    results = []
    for fn, _ in callback_map[kind]:
        try:
            results.append(fn(*args))
        except Exception:
            errors.report(f"Error executing callback {kind} for {fn}", exc_info=True)
    return results


def ui_settings_callback():
    _run("callbacks_ui_settings")


def before_ui_callback():
    _run("callbacks_before_ui")


def app_started_callback(demo, app):
    _run("callbacks_app_started", demo, app)
