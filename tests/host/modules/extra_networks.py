"""Mirrors modules/extra_networks.py: `<name:args>` tags are removed from the prompt before it is read."""

import re
from collections import defaultdict

re_extra_net = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []


def parse_prompt(prompt):
    res = defaultdict(list)

    def found(m):
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, found, prompt), res


def parse_prompts(prompts):
    res, extra_data = [], None
    for prompt in prompts:
        updated, parsed = parse_prompt(prompt)
        extra_data = extra_data if extra_data is not None else parsed
        res.append(updated)
    return res, extra_data


def activate(p, extra_network_data):
    pass
