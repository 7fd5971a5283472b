"""Time per operation of a profiled training step, grouped by kind (matmul, reduction, layout, elementwise).

Reads what `keras_vitbn.tools.benchmark.profile` records: an XLA profile (TensorFlow
and JAX, an `XSpace` protobuf) matched with the optimised HLO that XLA dumped
for the step, or `torch.profiler`'s per-op averages. Pure functions over
those files and tables; the Markdown goes next to the raw trace.
"""

import collections
import glob
import os
import re

# "communication": data exchanged between devices (JAX's data parallelism), waiting for the slowest included.
KINDS = ("matmul", "reduction", "layout", "elementwise", "communication", "other")

_MATMUL = {"dot", "convolution"}
_COMMUNICATION = {
    "all-reduce",
    "all-reduce-start",
    "all-reduce-done",
    "all-gather",
    "all-gather-start",
    "all-gather-done",
    "reduce-scatter",
    "collective-permute",
    "collective-permute-start",
    "collective-permute-done",
    "all-to-all",
}
_REDUCTION = {"reduce", "reduce-window", "select-and-scatter", "scatter", "sort"}
# Ops that only move or view data.
_LAYOUT = {
    "bitcast",
    "broadcast",
    "concatenate",
    "constant",
    "copy",
    "dynamic-slice",
    "dynamic-update-slice",
    "gather",
    "get-tuple-element",
    "iota",
    "pad",
    "parameter",
    "reshape",
    "reverse",
    "slice",
    "transpose",
    "tuple",
}
# Instructions whose events contain their callees' events: counting both would count twice.
_CONTAINERS = {"while", "call", "conditional", "async-start", "async-done"}

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<shape>.+?) (?P<opcode>[a-z][\w\-]*)\((?P<rest>.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(?P<name>[\w.\-]+) .*\{\s*$")


def stem(name):
    """An HLO instruction's name without its numbering: `copy_bitcast_fusion.15` -> `copy_bitcast_fusion`.

    TensorFlow's own op numbering goes too (`MatMul_4.2` -> `MatMul`), so that
    the same operation in every encoder block is one row.
    """
    return re.sub(r"(_\d+)?(\.\d+)+$", "", name)


def training_step_hlo(hlo_dir):
    """The optimised HLO text file of the training step: the largest module XLA dumped (None if none)."""
    files = [
        f
        for f in glob.glob(os.path.join(hlo_dir, "*after_optimizations.txt"))
        if not re.search(r"after_optimizations-", os.path.basename(f))
    ]
    return max(files, key=os.path.getsize) if files else None


def parse_hlo(text):
    """{instruction name: {"shape", "opcode", "kind"}} for every instruction of an HLO module's text."""
    bodies, parsed, current = collections.defaultdict(set), [], None
    for line in text.splitlines():
        computation = _COMPUTATION.match(line)
        if computation:
            current = computation.group("name")
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        parsed.append(m)
        if current:
            bodies[current].add(m.group("opcode"))
    instructions = {}
    for m in parsed:  # kinds once every fused computation's opcodes are known
        calls = re.search(r"calls=%([\w.\-]+)", m.group("rest"))
        target = re.search(r'custom_call_target="([^"]*)"', m.group("rest"))
        instructions[m.group("name")] = {
            "shape": _short_shape(m.group("shape")),
            "opcode": m.group("opcode"),
            "kind": _kind(
                m.group("opcode"), bodies.get(calls.group(1), set()) if calls else set(), target and target.group(1)
            ),
        }
    return instructions


def _short_shape(shape):
    """`f32[100,17,64]{2,1,0}` -> `f32[100,17,64]`; a tuple of n arrays -> `(n arrays)`."""
    if shape.startswith("("):
        arrays = len(re.findall(r"[a-z]+[0-9]*\[", shape))
        return f"({arrays} arrays)"
    return shape.split("{")[0]


def _kind(opcode, body, custom_call_target=None):
    if opcode in _CONTAINERS:
        return None
    if opcode in _COMMUNICATION:
        return "communication"
    if opcode == "custom-call":
        target = (custom_call_target or "").lower()
        return "matmul" if any(t in target for t in ("matmul", "dot", "conv", "gemm")) else "other"
    ops = {opcode} | body
    if ops & _MATMUL:
        return "matmul"
    if ops & _REDUCTION:
        return "reduction"
    if ops - {"fusion"} <= _LAYOUT:
        return "layout"
    return "elementwise"


def _kind_from_name(name):
    """A guess from an XLA event name alone, for a profile without its HLO."""
    lowered = name.lower()
    for kind, words in (
        ("matmul", ("dot", "matmul", "conv", "gemm")),
        ("reduction", ("reduce",)),
        ("layout", ("transpose", "copy", "concat", "slice", "pad")),
    ):
        if any(w in lowered for w in words):
            return kind
    return "elementwise"


def read_xspace(path):
    """Every event of an XLA profile (`*.xplane.pb`) as (line name, event name, duration in ns)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # TensorFlow ships the XSpace protobuf

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                yield line.name, names.get(event.metadata_id, ""), event.duration_ps / 1000.0


def find_xspace(trace_dir):
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    return files[-1] if files else None


def xla_ops(events, instructions=None):
    """{(kind, label, shape): [instruction names, calls, total ns]} of the XLA operations among `events`.

    With the step's HLO, an event counts when its name is an instruction of it
    (loops and calls left out: their bodies' events are counted). Without it,
    the events of XLA's worker threads whose names look like instructions.
    """
    table = collections.defaultdict(lambda: [set(), 0, 0.0])
    for line, name, ns in events:
        if instructions is not None:
            info = instructions.get(name)
            if info is None or info["kind"] is None:
                continue
            key = (info["kind"], stem(name), info["shape"])
        else:
            if not re.search(r"Eigen|XLA", line) or not re.fullmatch(r"[A-Za-z_][\w\-]*(\.\d+)+", name):
                continue
            key = (_kind_from_name(name), stem(name), "")
        row = table[key]
        row[0].add(name)
        row[1] += 1
        row[2] += ns
    return table


# Words of PyTorch op names (split at "_") that say the op's kind.
_TORCH_KINDS = (
    ("matmul", {"mm", "bmm", "addmm", "baddbmm", "matmul", "linear", "mv", "addmv", "convolution", "dot", "attention"}),
    ("reduction", {"sum", "mean", "var", "std", "norm", "softmax", "max", "amax", "min", "argmax", "nll", "prod"}),
    (
        "layout",
        {
            "copy",
            "clone",
            "contiguous",
            "transpose",
            "permute",
            "view",
            "reshape",
            "cat",
            "stack",
            "expand",
            "strided",
            "split",
            "unbind",
            "slice",
            "select",
            "index",
            "t",
            "empty",
            "zeros",
            "fill",
            "resize",
        },
    ),
)


def torch_kind(name):
    """The kind of a PyTorch op from its name, e.g. `aten::addmm` -> matmul, `aten::_to_copy` -> layout."""
    words = set(name.split("::")[-1].lower().split("_"))
    for kind, kind_words in _TORCH_KINDS:
        if words & kind_words:
            return kind
    return "elementwise" if name.startswith("aten::") else "other"


def torch_ops(key_averages):
    """{(kind, op, ""): [{op}, calls, self CPU ns]} from `torch.profiler.profile().key_averages()`."""
    table = {}
    for event in key_averages:
        if event.self_cpu_time_total <= 0:
            continue
        table[(torch_kind(event.key), event.key, "")] = [set(), event.count, event.self_cpu_time_total * 1000.0]
    return table


def summarize(table, steps):
    """Per-step rows (largest first) and per-kind totals, in ms per training step."""
    total = sum(row[2] for row in table.values()) or 1.0
    rows = [
        {
            "kind": kind,
            "op": label,
            "shape": shape,
            "instructions": len(names) or None,
            "calls_per_step": calls / steps,
            "ms_per_step": ns / 1e6 / steps,
            "share": ns / total,
        }
        for (kind, label, shape), (names, calls, ns) in table.items()
    ]
    rows.sort(key=lambda r: -r["ms_per_step"])
    kinds = {k: sum(r["ms_per_step"] for r in rows if r["kind"] == k) for k in KINDS}
    return rows, {k: v for k, v in kinds.items() if v > 0}


def format_markdown(result, top=25):
    """The profile's summary and its largest operations as Markdown."""
    r = result
    op_total = sum(r["kinds"].values())
    lines = [
        f"# Where the training step's time goes: {r['model']}, depth {r['depth']}, batch {r['batch_size']}, "
        f"{r['backend']}",
        "",
        f"{r['steps']} traced steps ({r['settings']}, {r['devices']} device(s)); traced wall time "
        f"{r['wall_ms_per_step']:.1f} ms per step ({r['images_per_s']:.0f} images/s with the profiler on); "
        f"time inside {r['source']}: {op_total:.1f} ms per step. "
        + (
            "Operations running side by side on several threads or devices are summed, so that total can "
            "exceed the wall time; what is left of the wall time is the framework between operations."
        ),
        "",
        "| kind | ms/step | share |",
        "|---|---|---|",
    ]
    for kind, ms in sorted(r["kinds"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {ms:.2f} | {100 * ms / op_total:.1f}% |")
    lines += [
        "",
        f"Largest {min(top, len(r['ops']))} of {len(r['ops'])} operation groups "
        "(same kind, name and output shape; `instructions`: how many such XLA operations the step has):",
        "",
        "| kind | operation | output shape | instructions | calls/step | ms/step | share |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["ops"][:top]:
        lines.append(
            f"| {row['kind']} | `{row['op']}` | {row['shape'] and '`' + row['shape'] + '`'} | "
            f"{row['instructions'] or ''} | "
            f"{row['calls_per_step']:.1f} | {row['ms_per_step']:.3f} | {100 * row['share']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def compare(first, second):
    """What changed from one profile (ops.json dict) to another, in ms per step, largest change first."""
    kinds = sorted(set(first["kinds"]) | set(second["kinds"]), key=KINDS.index)
    kind_rows = [(k, first["kinds"].get(k, 0.0), second["kinds"].get(k, 0.0)) for k in kinds]
    ops = {}
    for which, result in enumerate((first, second)):
        for row in result["ops"]:
            ops.setdefault((row["kind"], row["op"], row["shape"]), [0.0, 0.0])[which] += row["ms_per_step"]
    op_rows = [
        {"kind": k, "op": op, "shape": shape, "first": a, "second": b, "change": b - a}
        for (k, op, shape), (a, b) in ops.items()
    ]
    op_rows.sort(key=lambda r: -abs(r["change"]))
    return kind_rows, op_rows


def _label(result):
    return f"{result['model']} d{result['depth']} {result['backend']}"


def format_comparison(first, second, top=25):
    """`compare` as Markdown: per kind, then the operation groups that changed most."""
    kind_rows, op_rows = compare(first, second)
    a, b = _label(first), _label(second)
    if a == b:
        a, b = f"{a} (first)", f"{b} (second)"
    total_a, total_b = sum(r[1] for r in kind_rows), sum(r[2] for r in kind_rows)
    lines = [
        f"# {a} -> {b}: ms per training step",
        "",
        f"| kind | {a} | {b} | change |",
        "|---|---|---|---|",
        *(f"| {k} | {x:.2f} | {y:.2f} | {y - x:+.2f} |" for k, x, y in kind_rows),
        f"| all operations | {total_a:.2f} | {total_b:.2f} | {total_b - total_a:+.2f} |",
        f"| traced wall time | {first['wall_ms_per_step']:.2f} | {second['wall_ms_per_step']:.2f} | "
        f"{second['wall_ms_per_step'] - first['wall_ms_per_step']:+.2f} |",
        "",
        f"The {min(top, len(op_rows))} operation groups that changed most (0 where a profile has none):",
        "",
        f"| kind | operation | output shape | {a} | {b} | change |",
        "|---|---|---|---|---|---|",
    ]
    for r in op_rows[:top]:
        lines.append(
            f"| {r['kind']} | `{r['op']}` | {r['shape'] and '`' + r['shape'] + '`'} | {r['first']:.3f} | "
            f"{r['second']:.3f} | {r['change']:+.3f} |"
        )
    return "\n".join(lines) + "\n"
