"""The trained adapter as something vLLM serves: checked against its base, merged into a new folder.

``describe_adapter`` records what an adapter is for (``tooldistill-adapter.json`` beside PEFT's
files): the base model folder, the base's fingerprint (its ``config.json`` and the weights' SHA-256
from the prepared folder's manifest), and the adapter's own checksum.  ``merge`` refuses an adapter
made for another base, then folds the LoRA update into the base weights (PEFT's
``merge_and_unload``) and writes a complete model folder — weights in the serving dtype, the
base's tokenizer and chat template — that any vLLM profile serves like the base
(``--model-source``).  Nothing about the engine changes, so the CPU profile serves a fine-tuned
student as it serves the base.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

ADAPTER_MANIFEST = "tooldistill-adapter.json"
MERGED_MANIFEST = "tooldistill-model.json"
#: Files of the base folder that a merged folder takes as they are (tokenizer, template).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "vocab.json", "merges.txt", "generation_config.json")  # fmt: skip


class AdapterError(ValueError):
    """An adapter that cannot be used (missing, or made for another base model)."""


def _sha256(path: Path) -> str:
    from tooldistill.serve.models import sha256_file

    return sha256_file(path)


def base_fingerprint(base: Path) -> str:
    """What identifies a base model: its config and its weights (from the prepared folder's
    manifest when there is one, else the weight files' own checksums)."""
    config = base / "config.json"
    if not config.is_file():
        raise AdapterError(f"base model {base} has no config.json: not a model folder")
    parts = [_sha256(config)]
    manifest_path = base / MERGED_MANIFEST
    files: dict[str, str] = {}
    if manifest_path.is_file():
        files = dict(json.loads(manifest_path.read_text()).get("files") or {})
    for path in sorted(base.glob("*.safetensors")):
        parts.append(files.get(path.name) or _sha256(path))
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def adapter_checksum(adapter: Path) -> str:
    """SHA-256 over the adapter's PEFT files (config and weights)."""
    digest = hashlib.sha256()
    for path in sorted(adapter.iterdir()):
        if path.is_file() and path.name != ADAPTER_MANIFEST:
            digest.update(path.name.encode())
            digest.update(_sha256(path).encode())
    return digest.hexdigest()


def describe_adapter(adapter: Path, base: Path, served_name: str | None = None) -> dict[str, Any]:
    """Write (and return) the adapter's manifest: its base, the base's fingerprint, its checksum."""
    if not (adapter / "adapter_config.json").is_file():
        raise AdapterError(f"no adapter at {adapter} (adapter_config.json missing)")
    size = sum(p.stat().st_size for p in adapter.iterdir() if p.is_file())
    manifest = {
        "base_model": str(base),
        "base_fingerprint": base_fingerprint(base),
        "adapter_sha256": adapter_checksum(adapter),
        "adapter_bytes": size,
        "served_name": served_name,
    }
    (adapter / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_adapter(adapter: Path, base: Path) -> dict[str, Any]:
    """The adapter's manifest, after checking it exists, is intact and was made for ``base``."""
    if not adapter.is_dir() or not (adapter / "adapter_config.json").is_file():
        raise AdapterError(f"no adapter at {adapter} (adapter_config.json missing)")
    manifest_path = adapter / ADAPTER_MANIFEST
    if not manifest_path.is_file():
        raise AdapterError(f"{adapter} has no {ADAPTER_MANIFEST}: not written by tooldistill finetune")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    if manifest.get("adapter_sha256") != adapter_checksum(adapter):
        raise AdapterError(f"adapter {adapter} does not match its checksum (changed or damaged)")
    if manifest.get("base_fingerprint") != base_fingerprint(base):
        raise AdapterError(
            f"adapter {adapter} was made for another base model ({manifest.get('base_model')}), "
            f"not for {base}"
        )
    return manifest


def merge(adapter: Path, base: Path, out: Path, dtype: str = "float32") -> tuple[Path, bool]:
    """A model folder with the adapter folded into ``base``'s weights; (folder, built now).  A folder
    already merged from this adapter and base is kept."""
    manifest = check_adapter(adapter, base)
    stamp = hashlib.sha256(
        f"{manifest['adapter_sha256']}{manifest['base_fingerprint']}{dtype}".encode()
    ).hexdigest()
    existing = out / MERGED_MANIFEST
    if existing.is_file():
        try:
            if json.loads(existing.read_text()).get("merged_from") == stamp:
                return out, False
        except ValueError:
            pass
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        merged.to(getattr(torch, dtype)).save_pretrained(str(staging), safe_serialization=True)
        for name in _TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copy2(base / name, staging / name)
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
        (staging / MERGED_MANIFEST).write_text(
            json.dumps(
                {
                    "model": "merged",
                    "base_model": str(base),
                    "adapter": str(adapter),
                    "adapter_sha256": manifest["adapter_sha256"],
                    "merged_from": stamp,
                    "dtype": dtype,
                    "files": files,
                },
                indent=2,
            )
            + "\n"
        )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out, True


def publish_adapter(adapter: Path, store: str, name: str) -> str:
    """Copy the adapter folder to ``<store>/<name>/`` (local or cloud, through the dataset store's
    filesystems), where Ray Serve LLM's LoRA loading finds it; returns that folder's URI.

    ``adapter_config.json`` is written last, so a replica that lists the folder mid-copy does not
    load a half adapter (the loader looks for that file first)."""
    from tooldistill import store as datastore

    folder = datastore.join(store.rstrip("/"), name)
    files = sorted(
        (p for p in adapter.iterdir() if p.is_file()), key=lambda p: p.name == "adapter_config.json"
    )
    for path in files:
        datastore.write_file(folder, path.name, path.read_bytes())
    return folder
