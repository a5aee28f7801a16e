"""What a finetuned bundle keeps of how it was made (``provenance`` in its bundle.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def bundle_provenance(
    record: dict,
    encoder_source: str | Path,
    base: Any = None,
    init_bundle: Any = None,
    init_head_from: str | Path | None = None,
) -> dict:
    """The provenance of a finetuned bundle: the run ``record``, how its encoder was pretrained, and
    how the head it started from was made.

    ``base`` is the ``--encoder`` bundle (None for a CLIP folder); ``init_bundle`` the bundle whose
    head the run started from; ``init_head_from`` the head folder it started from, when that was
    no bundle.
    """
    provenance = {"finetune": {k: v for k, v in record.items() if k != "history"}, "finetune_history": record["history"]}
    pretrain_file = Path(encoder_source) / "pretrain.json"
    if pretrain_file.is_file():
        pre = json.loads(pretrain_file.read_text())
        provenance["encoder_pretraining"] = {k: v for k, v in pre.items() if k != "history"}
    elif base is not None:
        provenance["encoder_pretraining"] = base.spec.provenance.get("encoder_pretraining")
    if init_bundle is not None:
        # The head continued from another bundle's: keep how that one was made, to reproduce both steps.
        provenance["init_head"] = earlier_round({"model_id": init_bundle.spec.model_id, **{
            k: v for k, v in init_bundle.spec.provenance.items() if k in ("finetune", "init_head")}})
    elif init_head_from is not None:
        provenance["init_head"] = {"source": str(init_head_from)}
    return provenance


def earlier_round(record: dict) -> dict:
    """How a starting head was made, as the next bundle keeps it: everything but the data lists,
    which shrink to a digest (count, sha256, sources) at every level of the nested rounds.

    Each round's list repeats the last one's and adds seeds; kept whole at every level, they were
    most of bundle.json, and it grew by a whole list a round.
    """
    out = dict(record)
    finetune_record = out.get("finetune")
    if isinstance(finetune_record, dict) and isinstance(finetune_record.get("data"), list):
        data = finetune_record["data"]
        out["finetune"] = {**finetune_record, "data": {
            "recordings": len(data),
            "sha256": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest(),
            "sources": list(dict.fromkeys(str(d.get("source")) for d in data)),
        }}
    if isinstance(out.get("init_head"), dict):
        out["init_head"] = earlier_round(out["init_head"])
    return out
