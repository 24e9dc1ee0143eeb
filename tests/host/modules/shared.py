"""Mirrors modules/shared.py, modules/options.py (Options with `reorder`, OptionInfo, options_section, the
settings categories), modules/shared_options.py (the categories it registers, the settings the stand-in
reads) and modules/shared_state.py (State)."""

from __future__ import annotations

import types
from dataclasses import dataclass

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


@dataclass
class OptionsCategory:
    id: str
    label: str


class OptionsCategories:
    def __init__(self):
        self.mapping = {}

    def register_category(self, category_id, label):
        if category_id in self.mapping:
            return category_id
        self.mapping[category_id] = OptionsCategory(category_id, label)


categories = OptionsCategories()
# modules/shared_options.py registers these, in this order; an option without a known category is shown
# under "Uncategorized" (Options.dumpjson).
categories.register_category("saving", "Saving images")
categories.register_category("sd", "Stable Diffusion")
categories.register_category("ui", "User Interface")
categories.register_category("system", "System")
categories.register_category("postprocessing", "Postprocessing")
categories.register_category("training", "Training")


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

    def reorder(self):
        """Called when the Settings page is built (ui_settings.py): every option of a section takes the
        category of the section's first option; categories in registration order, sections by label."""
        category_ids, section_categories = {}, {}
        settings_items = self.data_labels.items()
        for _, item in settings_items:
            if item.section not in section_categories:
                section_categories[item.section] = item.category_id
        for _, item in settings_items:
            item.category_id = section_categories.get(item.section)
        for category_id in categories.mapping:
            if category_id not in category_ids:
                category_ids[category_id] = len(category_ids)

        def sort_key(x):
            item = x[1]
            return category_ids.get(item.category_id, len(category_ids)), item.section[1]

        object.__setattr__(self, "data_labels", dict(sorted(settings_items, key=sort_key)))

    def category_label(self, key):
        """The heading an option is listed under on the Settings page (Options.dumpjson's rule)."""
        category = categories.mapping.get(self.data_labels[key].category_id)
        return "Uncategorized" if category is None else category.label


# The host defaults of the settings the stand-in reads, in their sections (modules/shared_options.py).
opts = Options(
    {
        **options_section(
            ("saving-images", "Saving images/grids", "saving"),
            {
                "samples_save": OptionInfo(True),
                "samples_format": OptionInfo("png"),
                "save_images_add_number": OptionInfo(True),
            },
        ),
        **options_section(
            ("sd", "Stable Diffusion", "sd"),
            {
                "emphasis": OptionInfo("Original"),
                "comma_padding_backtrack": OptionInfo(20),
                "randn_source": OptionInfo("GPU"),
            },
        ),
        **options_section(
            ("sdxl", "Stable Diffusion XL", "sd"),
            {
                "sdxl_crop_top": OptionInfo(0),
                "sdxl_crop_left": OptionInfo(0),
                "sdxl_refiner_low_aesthetic_score": OptionInfo(2.5),
                "sdxl_refiner_high_aesthetic_score": OptionInfo(6.0),
            },
        ),
        **options_section(
            ("optimizations", "Optimizations", "sd"),
            {
                "batch_cond_uncond": OptionInfo(True),
                "token_merging_ratio": OptionInfo(0.0),
                "token_merging_ratio_hr": OptionInfo(0.0),
            },
        ),
        **options_section(("img2img", "img2img", "sd"), {"img2img_fix_steps": OptionInfo(False)}),
        **options_section(("compatibility", "Compatibility", "sd"), {"use_old_scheduling": OptionInfo(False)}),
        **options_section(("infotext", "Infotext", "ui"), {"infotext_skip_pasting": OptionInfo([])}),
        **options_section(("ui_gallery", "Gallery", "ui"), {"return_grid": OptionInfo(True)}),
        **options_section(
            ("sampler-params", "Sampler parameters", "sd"),
            {
                "eta_ddim": OptionInfo(0.0),
                "eta_ancestral": OptionInfo(1.0),
                "eta_noise_seed_delta": OptionInfo(0),
                "always_discard_next_to_last_sigma": OptionInfo(False),
                "sgm_noise_multiplier": OptionInfo(False),
            },
        ),
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
