"""Mirrors modules/prompt_parser.py. The text side (schedules, AND, emphasis) is `initno.prompt`, which
tests/test_prompt.py checks against the host's own output; the conditioning side is mirrored here."""

from __future__ import annotations

from collections import namedtuple

import torch

from initno.prompt import parse_emphasis, prompt_schedule, split_and


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    steps = base_steps if hires_steps is None or use_old_scheduling else hires_steps
    return [[[step, text] for step, text in prompt_schedule(prompt, steps)] for prompt in prompts]


def parse_prompt_attention(text):
    return [[t, w] for t, w in parse_emphasis(text)]


ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__()
        self.extend(prompts)
        copy_from = prompts if copy_from is None else copy_from
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    res = []
    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    cache = {}
    for prompt, schedule in zip(prompts, schedules):
        if prompt in cache:
            res.append(cache[prompt])
            continue
        texts = SdConditioning([x[1] for x in schedule], copy_from=prompts)
        conds = model.get_learned_conditioning(texts)
        cond_schedule = []
        for i, (end_at_step, _) in enumerate(schedule):
            cond = {k: v[i] for k, v in conds.items()} if isinstance(conds, dict) else conds[i]
            cond_schedule.append(ScheduledPromptConditioning(end_at_step, cond))
        cache[prompt] = cond_schedule
        res.append(cond_schedule)
    return res


def get_multicond_prompt_list(prompts):
    res_indexes, prompt_indexes = [], {}
    prompt_flat_list = SdConditioning(prompts)
    prompt_flat_list.clear()
    for prompt in prompts:
        indexes = []
        for text, weight in split_and(prompt):
            index = prompt_indexes.get(text)
            if index is None:
                index = len(prompt_flat_list)
                prompt_flat_list.append(text)
                prompt_indexes[text] = index
            indexes.append((index, weight))
        res_indexes.append(indexes)
    return res_indexes, prompt_flat_list, prompt_indexes


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules = schedules
        self.weight = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape = shape
        self.batch = batch


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    res_indexes, prompt_flat_list, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, prompt_flat_list, steps, hires_steps, use_old_scheduling)
    batch = [
        [ComposableScheduledPromptConditioning(learned[i], weight) for i, weight in indexes] for indexes in res_indexes
    ]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


class DictWithShape(dict):
    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def _target(schedules, current_step):
    for index, entry in enumerate(schedules):
        if current_step <= entry.end_at_step:
            return index
    return 0


def reconstruct_cond_batch(c, current_step):
    param = c[0][0].cond
    if isinstance(param, dict):
        res = DictWithShape(
            {k: torch.zeros((len(c), *v.shape), device=v.device, dtype=v.dtype) for k, v in param.items()}
        )
    else:
        res = torch.zeros((len(c), *param.shape), device=param.device, dtype=param.dtype)
    for i, schedule in enumerate(c):
        cond = schedule[_target(schedule, current_step)].cond
        if isinstance(param, dict):
            for k, v in cond.items():
                res[k][i] = v
        else:
            res[i] = cond
    return res


def stack_conds(tensors):
    token_count = max(x.shape[0] for x in tensors)
    for i in range(len(tensors)):
        if tensors[i].shape[0] != token_count:
            last = tensors[i][-1:]
            tensors[i] = torch.vstack([tensors[i], last.repeat([token_count - tensors[i].shape[0], 1])])
    return torch.stack(tensors)


def reconstruct_multicond_batch(c, current_step):
    param = c.batch[0][0].schedules[0].cond
    tensors, conds_list = [], []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable in composable_prompts:
            target = _target(composable.schedules, current_step)
            conds_for_batch.append((len(tensors), composable.weight))
            tensors.append(composable.schedules[target].cond)
        conds_list.append(conds_for_batch)
    if isinstance(tensors[0], dict):
        stacked = {k: stack_conds([x[k] for x in tensors]) for k in tensors[0]}
        stacked = DictWithShape(stacked, stacked["crossattn"].shape)
    else:
        stacked = stack_conds(tensors).to(device=param.device, dtype=param.dtype)
    return conds_list, stacked
