"""Bytes on the wire per site per round: SVD-LoRA replies vs. full-model FedAvg replies.

    python -m benchmarks.wire

Measured from Flower's own serialisation: a message travels as the deflated objects of its object
tree (message, records, arrays, array chunks), which the SuperNode stores and pushes one by one; the
sum of their byte lengths is what crosses the wire, before gRPC framing. The default ViT's reply is
produced by the real ClientApp train handler on a tiny shard; ViT-B/16's (no training on this CPU)
by the same wire encoding of an adapter of its shapes. Writes results/wire.csv and wire.png.
"""

from __future__ import annotations

import csv
import time
import uuid

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity

from benchmarks._isolate import ROOT
from fl_medlego import wire
from fl_medlego.clients.app import train
from fl_medlego.config import parse_run_config
from fl_medlego.files import atomic_path
from fl_medlego.lora import Adapter, Factors
from fl_medlego.models import create_backbone

RESULTS = ROOT / "benchmarks" / "results"


def wire_bytes(message: Message) -> int:
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def raw_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of the adapter's factor values alone (the ranks vector and all framing count as overhead)."""
    return tensors[wire.PACKED].numel() * tensors[wire.PACKED].element_size()


def request(site: str) -> Message:
    metadata = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=5, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=3600, message_type=MessageType.TRAIN)
    return make_message(metadata, RecordDict({wire.ARRAYS: ArrayRecord(),
                                              wire.CONFIG: ConfigRecord({wire.SITE: site, wire.SERVER_ROUND: 1})}))


def reply_like(msg: Message, arrays: ArrayRecord, site: str) -> Message:
    """A reply with the same records as the ClientApp's, around the given arrays."""
    metrics = MetricRecord({wire.NUM_EXAMPLES: 600.0, wire.VAL_ACC: 0.8, wire.BEST_EPOCH: 3.0, wire.TRAIN_LOSS: 0.5})
    info = ConfigRecord({wire.SITE: site, wire.BASE_FINGERPRINT: "0123456789abcdef",
                         wire.DATA_SOURCE: "bundled sample of bloodmnist (a subset of MedMNIST v2, CC BY 4.0)"})
    return Message(RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics, wire.SITE_INFO: info}), reply_to=msg)


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def main() -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 5, 1
    rows = []
    # Default ViT: the real train handler's reply.
    run_config = {"sites": "blood", "train.local-epochs": 1, "data.max-train": 32, "data.max-eval": 32}
    node_config = {wire.NODE_PARTITION_ID: 0, wire.NODE_NUM_PARTITIONS: 1}
    context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config=run_config)
    msg = request("blood")
    lora_reply = train(msg, context)
    adapter_raw = raw_bytes(lora_reply.content[wire.ARRAYS].to_torch_state_dict())
    small = create_backbone("vit_medmnist_28")
    full_small = torch.nn.Sequential(small, torch.nn.Linear(small.num_features, 8))
    rows.append(measure_pair("vit_medmnist_28", msg, lora_reply, adapter_raw, full_small, "blood"))
    # ViT-B/16: an adapter of its shapes through the same wire encoding, and its full weights.
    cfg = parse_run_config({"model.name": "vit_base_patch16_224"})
    template = cfg.kind_server().template()
    adapter = Adapter({n: Factors(torch.randn(o, 4), torch.randn(4), torch.randn(4, i)) for n, (o, i) in
                       template.items()}, scale=2.0)
    tensors = wire.encode_adapter(adapter)
    vit_b = create_backbone("vit_base_patch16_224")
    full_b = torch.nn.Sequential(vit_b, torch.nn.Linear(vit_b.num_features, 8))
    rows.append(measure_pair("vit_base_patch16_224", msg, reply_like(msg, ArrayRecord(tensors), "blood"),
                             raw_bytes(tensors), full_b, "blood"))
    write(rows)


def measure_pair(name, msg, lora_reply, adapter_raw, full_model, site) -> dict:
    lora_wire = wire_bytes(lora_reply)
    full_reply = reply_like(msg, ArrayRecord(full_model.state_dict()), site)
    full_wire = wire_bytes(full_reply)
    row = {"model": name, "adapter_raw_bytes": adapter_raw, "lora_wire_bytes": lora_wire,
           "wire_over_raw": lora_wire / adapter_raw, "full_model_bytes": model_bytes(full_model),
           "fedavg_wire_bytes": full_wire, "lora_fraction_of_fedavg": lora_wire / full_wire}
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return row


def write(rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_path(RESULTS / "wire.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["lora_wire_bytes"] for r in rows], 0.4, label="SVD-LoRA reply")
    ax.bar([i + 0.2 for i in x], [r["fedavg_wire_bytes"] for r in rows], 0.4, label="full-model FedAvg reply")
    ax.set_xticks(list(x), [r["model"] for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("bytes per site per round (measured)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(RESULTS / "wire.png") as tmp:
        fig.savefig(tmp, dpi=120)


if __name__ == "__main__":
    main()
