"""The entry for the WebUI's extension index (AUTOMATIC1111/stable-diffusion-webui-extensions)."""

import json
from pathlib import Path

# The tags the index accepts (its tags.json, as of v1.10.1).
INDEX_TAGS = {
    "script",
    "localization",
    "tab",
    "dropdown",
    "ads",
    "installed",
    "training",
    "models",
    "UI related",
    "prompting",
    "editing",
    "manipulations",
    "online",
    "animation",
    "query",
    "science",
    "extras",
}


def test_index_entry_has_the_fields_the_index_validates():
    entry = json.loads((Path(__file__).parents[1] / "extension-index.json").read_text())
    assert set(entry) == {"name", "url", "description", "tags"}
    assert entry["url"].startswith("https://github.com/") and entry["url"].endswith("/sd-webui-initno.git")
    assert set(entry["tags"]) <= INDEX_TAGS and {"script", "manipulations"} <= set(entry["tags"])
    assert 0 < len(entry["description"]) <= 400
