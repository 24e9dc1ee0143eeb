"""The extension as the host meets it: loading from any folder name, install.py, the HTTP routes, an
older host, and a core that never imports the host."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import HOST, REPO

EXTENSION_FILES = ("scripts", "initno", "javascript", "style.css", "install.py")


def _copy_extension(root: Path, folder: str) -> Path:
    target = root / folder
    target.mkdir()
    for name in EXTENSION_FILES:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target / name)
    return target


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    # A fresh interpreter that knows the host (tests/host) but not this repository.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(HOST), "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_loads_from_any_folder_name_through_the_hosts_loader(tmp_path):
    extension = _copy_extension(tmp_path, "sd-webui-initno (copy) #2")
    completed = _run(
        f"""
        import sys
        from modules import scripts
        path_before = list(sys.path)
        scripts.load_scripts([{str(extension / "scripts" / "initno.py")!r}])
        assert sys.path == path_before
        print([d.script_class.__name__ for d in scripts.scripts_data])
        from modules import errors
        assert not errors.reported, errors.reported
        runner = scripts.ScriptRunner()
        runner.initialize_scripts(False)
        print([s.title() for s in runner.alwayson_scripts], [s.title() for s in runner.selectable_scripts])
        """,
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["['InitNOAlwaysOn', 'InitNODropdown']", "['InitNO'] ['InitNO']"]


def test_an_older_host_gets_a_clear_message(tmp_path):
    extension = _copy_extension(tmp_path, "initno")
    completed = _run(
        f"""
        from modules import scripts
        del scripts.Script.process_before_every_sampling  # as in A1111 before 1.10
        scripts.load_scripts([{str(extension / "scripts" / "initno.py")!r}])
        runner = scripts.ScriptRunner()
        runner.initialize_scripts(False)
        import gradio as gr
        with gr.Blocks() as demo:
            runner.setup_ui()
        print([s.title() for s in runner.selectable_scripts], runner.inputs[1:])
        print([b.value for b in demo.blocks.values() if type(b).__name__ == "Markdown"])
        """,
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[0] == "[] []"
    assert "InitNO needs AUTOMATIC1111 WebUI 1.10 or newer" in completed.stdout


def test_install_py_installs_nothing_when_nothing_is_missing(tmp_path):
    (tmp_path / "launch.py").write_text(
        "calls = []\n"
        "import importlib.util\n"
        "def is_installed(package):\n    return importlib.util.find_spec(package) is not None\n"
        "def run_pip(command, desc=None):\n    calls.append(command)\n    print('PIP', command)\n"
    )
    completed = subprocess.run(
        [sys.executable, str(REPO / "install.py")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr
    assert "PIP" not in completed.stdout


def test_the_core_never_imports_the_host(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, initno.attention, initno.scores, initno.optimize, initno.params, initno.prompt, "
            "initno.subjects, initno.clip_bpe, initno.offline, initno.tiny, initno.diagnostics, initno.cli, "
            "initno.methods, initno.ddim, initno.selection, initno.webui.args, initno.webui.faults; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('modules', 'backend', 'gradio')))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_tokens_route_reads_the_prompt_as_the_loaded_model_does(webui):
    response = webui.client.post(
        "/initno/v1/tokens",
        json={"prompt": "a (cat:1.2) and a red apple BREAK a dog <lora:x:1>", "subjects": "cat, apple, dog"},
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert [(s["text"], s["positions"]) for s in report["subjects"]] == [("cat", [2]), ("apple", [6]), ("dog", [79])]
    assert report["context_length"] == 154
    assert report["tokens"][1] == {
        "position": 2,
        "id": 2368,
        "text": "cat",
        "weight": 1.2,
        "word_end": True,
        "embedding": None,
    }
    automatic = webui.client.post("/initno/v1/tokens", json={"prompt": "a cat and a red apple", "subjects": ""}).json()
    assert [(s["text"], s["auto"]) for s in automatic["subjects"]] == [("cat", True), ("apple", True)]
    bad = webui.client.post("/initno/v1/tokens", json={"prompt": "a cat and a dog", "subjects": "horse"})
    assert bad.status_code == 422
    assert "subject 'horse' is not in the prompt; the prompt's words are: a#1, cat#2" in bad.json()["detail"]


def test_tokens_route_names_every_reason_to_skip_known_before_generating(webui, monkeypatch):
    from modules import shared

    def unsupported(prompt="a cat and a dog"):
        response = webui.client.post("/initno/v1/tokens", json={"prompt": prompt, "subjects": ""})
        assert response.status_code == 200, response.text
        return response.json()["unsupported"]

    assert unsupported() is None
    assert unsupported("1girl, forest") == (
        "no subjects found automatically in the prompt (1, girl, ,, forest); type them in Subjects"
    )  # the words are still listed: the user can click one
    monkeypatch.setattr(shared.opts, "token_merging_ratio", 0.3)  # Settings → Optimizations
    assert unsupported() == "token merging is on; set Settings → Optimizations → Token merging ratio to 0"
    monkeypatch.setattr(type(webui.model), "is_sd3", True, raising=False)
    assert unsupported().startswith("token merging is on")  # the first reason, as the generation reports it
    monkeypatch.setattr(shared.opts, "token_merging_ratio", 0.0)
    assert unsupported().startswith("SD3 models have no UNet")


def test_schema_route_lists_the_arguments_in_positional_order(webui):
    from initno.webui.args import ARGS

    schema = webui.client.get("/initno/v1/schema").json()
    assert [a["name"] for a in schema["args"]] == [a.name for a in ARGS]
    rounds = next(a for a in schema["args"] if a["name"] == "max_rounds")
    assert rounds == {
        "name": "max_rounds",
        "type": "int",
        "default": 5,
        "minimum": 1,
        "maximum": 20,
        "label": "Max rounds",
        "infotext": "InitNO max rounds",
        "help": "Restarts from fresh noise before the fallback run.",
        "choices": None,
    }
    method = next(a for a in schema["args"] if a["name"] == "method")
    assert (method["type"], method["default"]) == ("str", "lookahead")
    assert method["choices"] == ["lookahead", "initno", "initno+", "ae"]
    candidates = next(a for a in schema["args"] if a["name"] == "lookahead_candidates")
    assert (candidates["default"], candidates["minimum"], candidates["maximum"]) == (4, 2, 16)


def test_settings_are_listed_under_the_stable_diffusion_category(webui):
    from modules import shared

    shared.opts.reorder()  # as the host does when it builds the Settings page
    keys = [key for key in shared.opts.data_labels if key.startswith("initno_")]
    assert len(keys) == 19  # Memory, and the default of each setting but the switch and the subjects
    assert {shared.opts.data_labels[key].section for key in keys} == {("initno", "InitNO")}
    assert {shared.opts.category_label(key) for key in keys} == {"Stable Diffusion"}  # not "Uncategorized"
    whole_steps = shared.opts.data_labels["initno_default_kl_max_steps"]  # an int without a slider
    assert (whole_steps.component.__name__, whole_steps.component_args) == ("Number", {"precision": 0})


def test_settings_page_defaults_reach_the_controls_and_the_api(webui):
    from modules import shared

    assert shared.opts.data_labels["initno_default_max_rounds"].section == ("initno", "InitNO")
    shared.opts.initno_default_max_rounds = 3
    try:
        from initno.webui import ui

        assert ui.setting_defaults()["max_rounds"] == 3
        response = webui.client.post(
            "/sdapi/v1/txt2img",
            json={
                "prompt": "a cat and a dog",
                "width": 128,
                "height": 128,
                "alwayson_scripts": {
                    "initno": {
                        "args": [{"method": "initno", "steps_per_round": 1, "fallback_steps": 0, "cross_threshold": 0}]
                    }
                },
            },
        )
        assert "InitNO max rounds: 3" in response.json()["info"]
    finally:
        shared.opts.initno_default_max_rounds = 5
