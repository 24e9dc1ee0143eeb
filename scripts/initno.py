"""What AUTOMATIC1111 loads from this extension's scripts/ folder; the code is the `initno` package."""

from modules import script_callbacks

from initno.webui import routes, ui, xyz

# The always-on script first: the API finds always-on scripts by the first title match.
from initno.webui.script import InitNOAlwaysOn, InitNODropdown  # noqa: F401

script_callbacks.on_ui_settings(ui.register_settings)
script_callbacks.on_before_ui(xyz.add_axes)
script_callbacks.on_app_started(routes.register)
