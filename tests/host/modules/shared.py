"""Mirrors modules/shared.py, modules/options.py (Options, OptionInfo, options_section) and
modules/shared_state.py (State)."""

from __future__ import annotations

import types

import torch


class OptionInfo:
    def __init__(
        self,
        default=None,
        label="",
        component=None,
        component_args=None,
        onchange=None,
        section=None,
        refresh=None,
        comment_before="",
        comment_after="",
        infotext=None,
        restrict_api=False,
        category_id=None,
    ):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.infotext = infotext
        self.restrict_api = restrict_api
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.do_not_save = False

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def needs_reload_ui(self):
        return self


def options_section(section_identifier, options_dict):
    for v in options_dict.values():
        if len(section_identifier) == 2:
            v.section = section_identifier
        elif len(section_identifier) == 3:
            v.section = section_identifier[0:2]
            v.category_id = section_identifier[2]
    return options_dict


class Options:
    def __init__(self, labels):
        object.__setattr__(self, "data_labels", dict(labels))
        object.__setattr__(self, "data", {k: v.default for k, v in labels.items()})

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        if key in self.data or key in self.data_labels:
            self.data[key] = value
            return
        object.__setattr__(self, key, value)

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default

    def get_default(self, key):
        label = self.data_labels.get(key)
        return None if label is None else label.default

    def set(self, key, value, is_api=False, run_callbacks=True):
        self.data[key] = value
        return True


# The host defaults of the settings the stand-in reads (modules/shared_options.py).
opts = Options(
    {
        "emphasis": OptionInfo("Original"),
        "comma_padding_backtrack": OptionInfo(20),
        "use_old_scheduling": OptionInfo(False),
        "randn_source": OptionInfo("GPU"),
        "eta_noise_seed_delta": OptionInfo(0),
        "always_discard_next_to_last_sigma": OptionInfo(False),
        "sgm_noise_multiplier": OptionInfo(False),
        "batch_cond_uncond": OptionInfo(True),
        "infotext_skip_pasting": OptionInfo([]),
        "return_grid": OptionInfo(True),
        "samples_save": OptionInfo(True),
        "samples_format": OptionInfo("png"),
        "save_images_add_number": OptionInfo(True),
        "disable_extra_networks": OptionInfo(False),
        "sdxl_crop_top": OptionInfo(0),
        "sdxl_crop_left": OptionInfo(0),
        "sdxl_refiner_low_aesthetic_score": OptionInfo(2.5),
        "sdxl_refiner_high_aesthetic_score": OptionInfo(6.0),
    }
)


class State:
    skipped = False
    interrupted = False
    stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    sampling_step = 0
    sampling_steps = 0
    textinfo = None

    def skip(self):
        self.skipped = True

    def interrupt(self):
        self.interrupted = True

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0

    def begin(self, job="(unknown)"):
        self.skipped = self.interrupted = self.stopping_generation = False
        self.job_count = -1
        self.job_no = 0
        self.sampling_step = 0
        self.textinfo = None
        self.job = job

    def end(self):
        self.job = ""
        self.job_count = 0


state = State()
device = torch.device("cpu")
cmd_opts = types.SimpleNamespace(no_half=True, disable_nan_check=False, api=True)
sd_model = None
loaded_hypernetworks: list = []
total_tqdm = types.SimpleNamespace(updateTotal=lambda *_: None, clear=lambda: None, update=lambda: None)
