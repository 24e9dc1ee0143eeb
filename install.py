"""Run by the WebUI at start-up (and after installing from the Extensions tab). InitNO needs nothing
beyond what the WebUI ships with (torch, numpy, gradio); this only reinstalls numpy if it is missing,
and never touches the network otherwise."""

import launch

for package in ("numpy",):
    if not launch.is_installed(package):
        launch.run_pip(f"install {package}", f"{package}, needed by InitNO")
