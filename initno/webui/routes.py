"""The extension's HTTP routes, added to the WebUI's FastAPI app in `on_app_started`:

- `POST /initno/v1/tokens` `{"prompt": str, "subjects": str, "steps": int = 20}` -> the prompt's tokens as
  the loaded model's text encoder sees them and the subjects' positions (the token view uses it), and
  `unsupported`: why InitNO will skip the loaded model (e.g. an SDXL refiner), or null;
  422 `{"detail": message}` for a subject that cannot be mapped.
- `GET /initno/v1/schema` -> the arguments: name, type, default, range, infotext key, in positional order.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from modules import extra_networks, shared
from pydantic import BaseModel

from ..subjects import SubjectError, choose_subjects, report
from . import host
from .args import ARGS


class TokensRequest(BaseModel):
    prompt: str
    subjects: str = ""
    steps: int = 20


def tokens(request: TokensRequest) -> dict:
    model = shared.sd_model
    if model is None:
        raise HTTPException(status_code=503, detail="no model is loaded")
    prompt, _ = extra_networks.parse_prompt(request.prompt)
    try:
        read = host.read_prompt_text(model, prompt, max(request.steps, 1))
        answer = report(read.tokens, choose_subjects(read.tokens, request.subjects, read.encode))
    except (SubjectError, ValueError) as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    return {**answer, "unsupported": _unsupported(model)}


def _unsupported(model) -> str | None:
    try:
        host.unet_of(model)
    except host.Unsupported as reason:
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
            }
            for arg in ARGS
        ]
    }


def register(_demo, app: FastAPI) -> None:
    app.add_api_route("/initno/v1/tokens", tokens, methods=["POST"])
    app.add_api_route("/initno/v1/schema", schema, methods=["GET"])
