"""The trust boundary: every reply a site sends is read here, into checked values or a rejection.

Whatever the bytes, `read_train_reply` and `read_evaluate_reply` return a reply the strategy can use
or raise `wire.InvalidUpdate` with a short reason; nothing else escapes. Sizes are checked against
the kind's bound before any array is allocated, and a reason never repeats more of a site's text
than a bounded, path-free excerpt.
"""

from __future__ import annotations

import math
import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord

from fl_medlego import wire
from fl_medlego.kinds import KindServer

MAX_TEXT = 120  # characters of a site's own text (an error reason, a data description) that may be logged
MAX_SERVED_BY = 160  # a Ray node id (56 hex digits), "@" and a host name (at most 64 characters by POSIX)
_SCAN = 64 * MAX_TEXT  # of a longer text, its head and its tail are read (a traceback's cause is at its end)
_DTYPES = {"<f4", "<f8", "<i4", "<i8"}  # little-endian float32/64, int32/64: what the kinds send
# Terminal escape sequences (Ray colours its tracebacks) and other control characters: never logged.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])|[\x00-\x08\x0b-\x1f\x7f]")
# Flower wraps a ClientApp's exception as "<class 'X'>:<'message'>" (flwr/supernode/runtime/run_clientapp.py); in
# simulation X is Ray's RayTaskError(ClientAppException) and the message Ray's coloured traceback, whose last
# exception is Flower's "ClientAppException: \nException ClientAppException occurred. Message: <the site's>".
_FLOWER_WRAPPER = re.compile(r"\s*<class '[^'<>\n]{1,200}'>:<'")
_CLIENT_APP_MESSAGE = re.compile(r"\s*Exception ClientAppException occurred\. Message: ")
_FRAME = re.compile(r'\s+File "')  # a traceback's frame line; its source and caret lines are indented too
_CHAINED = ("The above exception was the direct cause of the following exception:",
            "During handling of the above exception, another exception occurred:")
_QUALIFIED = re.compile(r"^(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*(?::|$))")  # "pkg.mod." of "pkg.mod.Error: ..."
# From the first path-like token (/a/b, ~/a, C:\a\b) to the end of the line, as a path may hold spaces, or to a
# ": " (an exception's "could not read PATH: why": the why is kept).
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[\\/~][^\s\\/]*[\\/][^\n]*?(?=: |$)")


def _readable(text: str) -> str:
    """The head and the tail of a long text (never all of a site's text), without escape or control codes."""
    text = text if len(text) <= 2 * _SCAN else text[:_SCAN] + "\n" + text[-_SCAN:]
    return _ESCAPES.sub("", text.replace("\r\n", "\n"))


def _exception_lines(block: list[str]) -> str | None:
    """The exception a traceback block ends with ("Type: message", its lines joined), None without a frame."""
    frames = [i for i, line in enumerate(block) if _FRAME.match(line)]
    if not frames:
        return None
    rest = block[frames[-1] + 1:]
    while rest and rest[0][:1].isspace():  # the frame's source line and its carets
        rest = rest[1:]
    return " ".join(line.strip() for line in rest if line.strip()) or None


def _is_client_app_wrapper(exception: str) -> bool:
    return exception.split(":", 1)[0].endswith("ClientAppException")


def traceback_cause(text: str) -> str | None:
    """The last exception of the site's own traceback in `text` (Flower's ClientAppException around it left
    out), as "Type: message"; None when `text` holds no traceback."""
    if 'File "' not in text:
        return None
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() in _CHAINED:
            blocks.append([])
        else:
            blocks[-1].append(line)
    exceptions = [e for e in map(_exception_lines, blocks) if e]
    while len(exceptions) > 1 and _is_client_app_wrapper(exceptions[-1]):
        exceptions.pop()  # Flower's wrapping of the exception before it: that one is the site's
    if not exceptions:
        return None
    cause = exceptions[-1]
    if _is_client_app_wrapper(cause):  # no traceback of the site's own: its message is what Flower kept
        cause = _CLIENT_APP_MESSAGE.sub("", cause.split(":", 1)[1], count=1).strip()
    return _QUALIFIED.sub("", cause)


def bounded(text: object, limit: int = MAX_TEXT) -> str:
    """A site's text made safe to log: escape and control codes removed, one line (the first, or of a traceback
    its last exception: the cause), paths masked, at most `limit` characters."""
    text = str(text)
    cause = traceback_cause(_readable(text))
    head = cause if cause is not None else _readable(text[: 4 * limit]).strip()
    line = head.splitlines()[0] if head else ""
    line = _PATH.sub("<path…>", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def site_error_text(reason: object) -> str:
    """The cause of a site's failure inside Flower's (and in simulation Ray's) wrapping of a ClientApp exception:
    the last exception of the site's traceback, or the site's own message (else the reason as it is), without
    escape codes."""
    text = _readable(str(reason))
    wrapper = _FLOWER_WRAPPER.match(text)
    if wrapper:
        text = text[wrapper.end():].removesuffix("'>")
    cause = traceback_cause(text)
    if cause is None:
        cause = _CLIENT_APP_MESSAGE.sub("", text, count=1) if wrapper else text
    return cause.strip()[: 8 * MAX_TEXT]


@dataclass(frozen=True)
class TrainReply:
    site: str
    update: object  # the kind's decoded update
    metrics: dict[str, float]  # the kind's declared train metrics, nothing else
    base_fingerprint: str
    data_origin: str  # bounded description, no paths
    served_by: str = ""  # simulation on Ray: the site's "<Ray node id>@<host>", bounded; "" when not said


@dataclass(frozen=True)
class EvaluateReply:
    site: str
    merged: dict[str, float]
    specialist: dict[str, float]


@contextmanager
def _rejections(site: str | None = None) -> Iterator[None]:
    """Whatever reading a reply raises becomes wire.InvalidUpdate: prefixed with its site once that is known,
    its text bounded (it may quote the reply), and an unexpected error named by its type alone."""
    try:
        yield
    except wire.InvalidUpdate as err:
        if site is None or err.internal:
            raise
        raise wire.InvalidUpdate(f"site {site}: {bounded(err, 300)}", site=site) from None
    except Exception as err:  # noqa: BLE001  the boundary: no reply may raise out of the strategy
        prefix = f"site {site}: " if site else ""
        raise wire.InvalidUpdate(f"{prefix}malformed reply ({type(err).__name__})", site=site) from None


def _record(msg: Message, key: str, kind: type):
    if key not in msg.content:
        raise wire.InvalidUpdate(f"the reply has no '{key}' record")
    record = msg.content[key]
    if not isinstance(record, kind):
        raise wire.InvalidUpdate(f"'{key}' is a {type(record).__name__}, not a {kind.__name__}")
    return record


def site_of(msg: Message, site_nodes: dict[str, int], sent: dict[str, str] | None = None) -> str:
    """The declared site a reply is for, if its node is the one that hosts it.

    sent: message id -> site of the messages this round sent; an error reply (which Flower's SuperLink
    may write itself, e.g. for a node that stopped its heartbeat) is attributed to its message's site.
    """
    with _rejections():
        return _site_of(msg, site_nodes, sent or {})


def _site_of(msg: Message, site_nodes: dict[str, int], sent: dict[str, str]) -> str:
    if msg.has_error():
        site = sent.get(msg.metadata.reply_to_message_id)
        prefix = f"site {site}: " if site else ""
        raise wire.InvalidUpdate(f"{prefix}the node reported an error (code {msg.error.code}): "
                                 f"{bounded(site_error_text(msg.error.reason))}", site=site)
    site = _record(msg, wire.SITE_INFO, ConfigRecord).get(wire.SITE)
    if not isinstance(site, str) or site not in site_nodes:
        raise wire.InvalidUpdate(f"the reply names no declared site (got {bounded(repr(site), 40)})")
    if site_nodes[site] != msg.metadata.src_node_id:
        raise wire.InvalidUpdate(f"node {msg.metadata.src_node_id} answered for site {site!r}, which it does not host")
    asked = sent.get(msg.metadata.reply_to_message_id)
    if asked is not None and asked != site:  # a node hosting two sites answering one's message as the other
        raise wire.InvalidUpdate(f"a reply to site {asked}'s message names site {site}", site=asked)
    return site


def read_arrays(record: ArrayRecord, max_elements: int, max_arrays: int) -> dict[str, torch.Tensor]:
    """The tensors of an ArrayRecord, each read from its .npy bytes after its header is checked."""
    if len(record) > max_arrays:
        raise wire.InvalidUpdate(f"'{wire.ARRAYS}' holds {len(record)} arrays, more than an update has")
    tensors, total = {}, 0
    for key, array in record.items():
        if not isinstance(key, str) or len(key) > 200 or not isinstance(array, Array):
            raise wire.InvalidUpdate("an array entry is not a named Array")
        if array.stype != "numpy.ndarray" or not isinstance(array.data, bytes):
            raise wire.InvalidUpdate(f"array {bounded(key, 60)!r} is not a serialised numpy array")
        buffer = BytesIO(array.data)
        try:
            version = np.lib.format.read_magic(buffer)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(buffer)
        except Exception:  # noqa: BLE001  whatever a forged header does, it is a rejection
            raise wire.InvalidUpdate(f"array {bounded(key, 60)!r} has no valid .npy header") from None
        if dtype.str not in _DTYPES or fortran or dtype.hasobject:
            raise wire.InvalidUpdate(f"array {bounded(key, 60)!r} has dtype {dtype.str}: expected little-endian "
                                     "float32/float64 or int32/int64")
        count = math.prod(shape)
        total += count
        if total > max_elements:  # before anything is allocated
            raise wire.InvalidUpdate(f"the update holds more than {max_elements} values")
        if len(array.data) - buffer.tell() != count * dtype.itemsize:
            raise wire.InvalidUpdate(f"array {bounded(key, 60)!r}: its bytes do not match its shape {shape}")
        values = np.frombuffer(array.data, dtype=dtype, count=count, offset=buffer.tell()).reshape(shape)
        tensors[key] = torch.from_numpy(values.copy())
    return tensors


def read_train_reply(msg: Message, site_nodes: dict[str, int], kind: KindServer, template: dict,
                     sent: dict[str, str] | None = None, optional: tuple[str, ...] = ()) -> TrainReply:
    """A train reply as checked values; raises only wire.InvalidUpdate (prefixed with the site once known).

    kind: the run's kind's server half (its codec, and its kind's declared metrics);
    optional: metrics a reply may carry beyond its kind's (those of the run's installed layers)."""
    site = site_of(msg, site_nodes, sent)
    with _rejections(site):
        metrics = wire.read_metrics(_record(msg, wire.METRICS, MetricRecord), kind.kind.train_metrics,
                                   optional=optional)
        # A kind's update has at most one array per template entry, plus its bookkeeping (ranks, ...).
        tensors = read_arrays(_record(msg, wire.ARRAYS, ArrayRecord), kind.size_bound(template), len(template) + 2)
        update = _decoded(kind, tensors, template, site)
        info = msg.content[wire.SITE_INFO]
        base = info.get(wire.BASE_FINGERPRINT)
        if not isinstance(base, str) or not re.fullmatch(r"[0-9a-f]{1,64}", base):
            raise wire.InvalidUpdate("the reply's base-model fingerprint is missing or malformed")
        origin, node = info.get(wire.DATA_SOURCE, ""), info.get(wire.SERVED_BY, "")
        return TrainReply(site, update, metrics, base, bounded(origin if isinstance(origin, str) else "", 80),
                          bounded(node, MAX_SERVED_BY) if isinstance(node, str) else "")


def _decoded(kind: KindServer, tensors: dict, template: dict, site: str) -> object:
    """The kind's decoding of checked arrays. Its InvalidUpdate is the site's fault; anything else it raises
    is a fault of the coordinator's own code: the reply is still not used, but the reason says whose fault
    it is and carries the traceback for the run's error log."""
    try:
        return kind.decode(tensors, template)
    except wire.InvalidUpdate:
        raise
    except Exception as err:  # noqa: BLE001  our bug, never blamed on the site
        raise wire.InvalidUpdate(f"site {site}: the coordinator failed to decode the update (internal error "
                                 f"{type(err).__name__}: {bounded(err)}); this is a fault of fl-medlego, please report "
                                 "it with the run's errors.log", site=site, internal=traceback.format_exc()) from None


def read_evaluate_reply(msg: Message, site_nodes: dict[str, int], kind: KindServer,
                        sent: dict[str, str] | None = None) -> EvaluateReply:
    """An evaluate reply as checked values: the kind's evaluation metrics of the merged update, and of the
    site's specialist when asked for (the shared ones and those its kind declares); raises only
    wire.InvalidUpdate."""
    site = site_of(msg, site_nodes, sent)
    with _rejections(site):
        extra = kind.kind.evaluate_metrics
        optional = (*extra, *(wire.SPECIALIST_PREFIX + m for m in (*wire.EVAL_METRICS, *extra)))
        declared = wire.read_metrics(_record(msg, wire.METRICS, MetricRecord), wire.EVAL_METRICS, optional=optional)
    merged = {k: v for k, v in declared.items() if not k.startswith(wire.SPECIALIST_PREFIX)}
    specialist = {k.removeprefix(wire.SPECIALIST_PREFIX): v for k, v in declared.items()
                  if k.startswith(wire.SPECIALIST_PREFIX)}
    return EvaluateReply(site, merged, specialist)


@dataclass(frozen=True)
class CurveReply:
    site: str
    curve: dict[str, list[float]]  # wire.VAL_ACC and wire.TEST_ACC: one ACC per epoch


def read_curve_reply(msg: Message, site_nodes: dict[str, int], epochs: int,
                     sent: dict[str, str] | None = None) -> CurveReply:
    """A learning-curve reply (new_task) as checked values: for each of validation and test, exactly `epochs`
    finite ACC values in [0, 1]; raises only wire.InvalidUpdate."""
    site = site_of(msg, site_nodes, sent)
    with _rejections(site):
        record = _record(msg, wire.METRICS, MetricRecord)
        curve = {}
        for key in (wire.VAL_ACC, wire.TEST_ACC):
            values = record.get(key)
            if not isinstance(values, list) or len(values) != epochs:
                raise wire.InvalidUpdate(f"'{key}' must be a list of {epochs} ACC values (one per epoch), got "
                                         f"{bounded(type(values).__name__, 20)}"
                                         + (f" of {len(values)}" if isinstance(values, list) else ""))
            if not all(isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
                raise wire.InvalidUpdate(f"'{key}' holds a value that is not an ACC in [0, 1]")
            curve[key] = [float(v) for v in values]
        return CurveReply(site, curve)
