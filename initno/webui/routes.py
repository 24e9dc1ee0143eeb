"""The extension's HTTP routes, added to the WebUI's FastAPI app in `on_app_started`:

- `POST /initno/v1/tokens` `{"prompt": str, "subjects": str, "steps": int = 20}` -> the prompt's tokens as
  the loaded model's text encoder sees them and the subjects' positions (the token view uses it), and
  `unsupported`: why InitNO will be skipped, as far as it is known before generating (the loaded model,
  e.g. an SDXL refiner; token merging in the settings; no subjects found automatically), or null;
  422 `{"detail": message}` for a subject that cannot be mapped.
- `GET /initno/v1/schema` -> the arguments: name, type, default, range, label, infotext key, help, choices,
  in positional order.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from modules import extra_networks, shared
from pydantic import BaseModel

from ..subjects import PromptTokens, SubjectError, choose_subjects, report, require_subjects
from . import faults
from .args import ARGS
from .checks import check_before_generating, is_loaded
from .conditioning import read_prompt_text
from .hosts import Host, host_of


class TokensRequest(BaseModel):
    prompt: str
    subjects: str = ""
    steps: int = 20


def tokens(request: TokensRequest) -> dict:
    model = shared.sd_model
    if model is None or not is_loaded(model):
        # A host may load the checkpoint at the first generation, with a placeholder until then.
        raise HTTPException(status_code=503, detail=faults.NO_MODEL)
    host = host_of(model)
    prompt, _ = extra_networks.parse_prompt(request.prompt)
    try:
        read = read_prompt_text(host, prompt, max(request.steps, 1))
        subjects = choose_subjects(read.tokens, request.subjects, read.encode)
    except ValueError as error:  # SubjectError is one, as are the prompt reader's errors
        raise HTTPException(status_code=422, detail=str(error)) from None
    return {**report(read.tokens, subjects), "unsupported": _unsupported(host, read.tokens, subjects)}


def _unsupported(host: Host, prompt: PromptTokens, subjects: list) -> str | None:
    """The first reason the generation would give, in its order: the model and settings, then the prompt.
    A per-request override of the token merging ratio is not known here: the setting is."""
    try:
        check_before_generating(host, getattr(shared.opts, "token_merging_ratio", 0))
        require_subjects(prompt, subjects)
    except (faults.Unsupported, SubjectError) as reason:
        return str(reason)
    return None


def schema() -> dict:
    return {
        "args": [
            {
                "name": arg.name,
                "type": arg.kind.__name__,
                "default": arg.default,
                "minimum": arg.minimum,
                "maximum": arg.maximum,
                "label": arg.label,
                "infotext": arg.infotext,
                "help": arg.help,
                "choices": [value for value, _label in arg.choices] if arg.choices else None,
            }
            for arg in ARGS
        ]
    }


def register(_demo, app: FastAPI) -> None:
    app.add_api_route("/initno/v1/tokens", tokens, methods=["POST"])
    app.add_api_route("/initno/v1/schema", schema, methods=["GET"])
