"""Mirrors modules/infotext_utils.py: quoting, `parse_generation_parameters` (the key/value part), and the
paste logic of `connect_paste` (how a pasted infotext becomes control values)."""

from __future__ import annotations

import json
import re

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
re_imagesize = re.compile(r"^(\d+)x(\d+)$")
UNCHANGED = object()


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str) -> dict:
    res = {}
    prompt, negative_prompt, done_with_prompt = "", "", False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in re_param.findall(lastline):
        if v and v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = re_imagesize.match(v)
        if m is not None:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    res["Prompt"], res["Negative prompt"] = prompt, negative_prompt
    return res


def paste(infotext: str, fields) -> list:
    """What `connect_paste`'s paste function sets each field to: a value, or UNCHANGED."""
    params = parse_generation_parameters(infotext)
    values = []
    for component, key in fields:
        v = key(params) if callable(key) else params.get(key, None)
        if v is None:
            values.append(UNCHANGED)
            continue
        valtype = type(component.value)
        if valtype is bool and v == "False":
            values.append(False)
        elif valtype is int:
            values.append(float(v))
        else:
            values.append(valtype(v))
    return values
