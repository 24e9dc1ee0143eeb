"""Mirrors modules/scripts.py: the Script base class, how extension script files are loaded (module named
after the file, the extension root on sys.path only while loading, every Script subclass in the module
registered), the ScriptRunner (UI argument slices, the Script dropdown, the always-on hooks, each hook's
exceptions reported and swallowed)."""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from collections import namedtuple

import gradio as gr
from modules import errors

AlwaysVisible = object()
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list[ScriptClassData] = []
current_basedir = os.getcwd()


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_hr(self, p, *args):
        pass

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = "".join(c for c in self.title().lower().replace(" ", "_") if c.isalnum() or c == "_")
        return f"script_{tabname}{title}_{item_id}"


def basedir():
    return current_basedir


def load_scripts(paths):
    """Loads script files as the host does: module name = file name, extension root on sys.path meanwhile."""
    global current_basedir
    scripts_data.clear()
    syspath = sys.path
    for path in paths:
        base = os.path.dirname(os.path.dirname(path))
        try:
            sys.path = [base, *sys.path]
            current_basedir = base
            spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            for script_class in module.__dict__.values():
                if inspect.isclass(script_class) and issubclass(script_class, Script):
                    scripts_data.append(ScriptClassData(script_class, path, base, module))
        except Exception:
            errors.report(f"Error loading script: {path}", exc_info=True)
        finally:
            sys.path = syspath
            current_basedir = os.getcwd()


def _report_errors(method):
    def call(self, p, *args, **kwargs):
        for script in self.alwayson_scripts:
            if getattr(type(script), method) is getattr(Script, method):
                continue
            try:
                script_args = p.script_args[script.args_from : script.args_to]
                if method in ("post_sample", "postprocess_batch_list", "postprocess_image", "postprocess"):
                    getattr(script, method)(p, *args, *script_args, **kwargs)
                elif method == "postprocess_batch":
                    getattr(script, method)(p, *script_args, images=args[0], **kwargs)
                else:
                    getattr(script, method)(p, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method}: {script.filename}", exc_info=True)

    return call


class ScriptRunner:
    def __init__(self):
        self.scripts, self.selectable_scripts, self.alwayson_scripts = [], [], []
        self.inputs = [None]
        self.infotext_fields, self.paste_field_names = [], []

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for script_data in scripts_data:
            script = script_data.script_class()
            script.filename = script_data.path
            script.is_txt2img, script.is_img2img = not is_img2img, is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def create_script_ui(self, script):
        script.args_from = script.args_to = len(self.inputs)
        controls = script.ui(script.is_img2img)
        script.controls = controls
        if controls is None:
            return
        script.name = script.title().lower()
        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields
        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names
        self.inputs += controls
        script.args_to = len(self.inputs)

    def setup_ui(self):
        """Always-on scripts in their groups, then the Script dropdown and each selectable script's group."""
        self.inputs = [None]
        for script in self.alwayson_scripts:
            with gr.Group(visible=True) as group:
                self.create_script_ui(script)
            script.group = group
        self.dropdown = gr.Dropdown(
            label="Script", choices=["None"] + [s.title() for s in self.selectable_scripts], value="None", type="index"
        )
        self.inputs[0] = self.dropdown
        for script in self.selectable_scripts:
            with gr.Group(visible=False) as group:
                self.create_script_ui(script)
            script.group = group
        return self.inputs

    def run(self, p, *args):
        script_index = args[0]
        if script_index == 0 or script_index is None:
            return None
        script = self.selectable_scripts[script_index - 1]
        return script.run(p, *args[script.args_from : script.args_to])

    setup_scrips = _report_errors("setup")
    before_process = _report_errors("before_process")
    process = _report_errors("process")
    before_process_batch = _report_errors("before_process_batch")
    process_batch = _report_errors("process_batch")
    process_before_every_sampling = _report_errors("process_before_every_sampling")
    post_sample = _report_errors("post_sample")
    postprocess_batch = _report_errors("postprocess_batch")
    postprocess_batch_list = _report_errors("postprocess_batch_list")
    postprocess_image = _report_errors("postprocess_image")
    postprocess = _report_errors("postprocess")
    before_hr = _report_errors("before_hr")


scripts_txt2img: ScriptRunner | None = None
scripts_img2img: ScriptRunner | None = None
