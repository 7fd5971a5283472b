"""The step profiler: real profiles of a tiny training run on the backend under test, and its op classification."""

import json
import os
import re

import keras
import pytest

from keras_vitbn.tools.benchmark import op_table
from keras_vitbn.tools.benchmark.profile import build_parser, load_profile, main, profile_training


def test_profile_of_a_training_run(tmp_path, monkeypatch, capsys):
    """A depth-1 ViTBNFFN, 3 traced steps, in a subprocess: the table adds up and names real operations."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    backend = keras.backend.backend()
    out = tmp_path / "profile"
    result = profile_training(model="vit_bnffn", depth=1, batch_size=8, steps=3, backend=backend, output=str(out))
    assert (result["backend"], result["steps"], result["devices"]) == (backend, 3, 1)
    assert result == json.loads((out / "ops.json").read_text())
    assert os.listdir(result["trace"]), "no raw trace written"
    rows = result["ops"]
    assert rows and all(r["ms_per_step"] > 0 and r["calls_per_step"] > 0 for r in rows)
    assert [r["ms_per_step"] for r in rows] == sorted((r["ms_per_step"] for r in rows), reverse=True)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert sum(result["kinds"].values()) == pytest.approx(sum(r["ms_per_step"] for r in rows))
    # Every step multiplies matrices: the patch projection, q/k/v, the FFN, and their gradients.
    assert result["kinds"]["matmul"] > 0
    matmuls = [r for r in rows if r["kind"] == "matmul"]
    if backend == "torch":
        assert {r["op"] for r in matmuls} & {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"}
    else:
        # Matched with the dumped HLO: every row has its output shape, none is a guess.
        assert result["hlo"] and os.path.isfile(result["hlo"])
        assert "guessed" not in result["source"]
        assert all(re.match(r"([a-z]+[0-9]*\[|\(\d+ arrays\))", r["shape"]) for r in rows), rows
        # The q/k/v projection: (batch x tokens, 3 x heads x dim_head) = (8 x 17, 1536), as 2 or 3 dimensions.
        assert any("1536]" in r["shape"] for r in matmuls), [r["shape"] for r in matmuls]
        # Without the HLO (kinds guessed from names), only XLA operations of the same trace are counted.
        events = list(op_table.read_xspace(op_table.find_xspace(result["trace"])))
        with open(result["hlo"]) as f:
            matched = op_table.xla_ops(events, op_table.parse_hlo(f.read()))
        guessed = op_table.xla_ops(events)
        names = lambda table: {name for row in table.values() for name in row[0]}  # noqa: E731
        assert guessed and names(guessed) <= names(matched), names(guessed) - names(matched)
        assert sum(row[2] for row in guessed.values()) <= sum(row[2] for row in matched.values())
    table = (out / "ops.md").read_text()
    assert "| matmul |" in table and f"{backend}" in table.splitlines()[0]
    # A finished profile is never overwritten.
    with pytest.raises(FileExistsError, match="already holds a profile"):
        profile_training(model="vit_bnffn", depth=1, batch_size=8, steps=3, backend=backend, output=str(out))
    assert json.loads((out / "ops.json").read_text()) == result
    # ViT -> ViTBNFFN: the comparison of two real profiles adds up.
    vit = profile_training(model="vit", depth=1, batch_size=8, steps=3, backend=backend, output=str(tmp_path / "vit"))
    kind_rows, op_rows = op_table.compare(vit, load_profile(str(out)))
    assert sum(b - a for _, a, b in kind_rows) == pytest.approx(sum(r["change"] for r in op_rows))
    assert sum(b for _, _, b in kind_rows) == pytest.approx(sum(result["kinds"].values()))
    assert [abs(r["change"]) for r in op_rows] == sorted((abs(r["change"]) for r in op_rows), reverse=True)
    assert main(["--compare", str(tmp_path / "vit"), str(out / "ops.json")]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == f"# vit d1 {backend} -> vit_bnffn d1 {backend}: ms per training step"


def test_bad_profile_arguments_raise(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KERAS_VITBN_DEBUG", raising=False)
    with pytest.raises(ValueError, match="unknown backend 'mxnet'"):
        profile_training(backend="mxnet", output=str(tmp_path))
    with pytest.raises(ValueError, match="unknown distribute 'all'"):
        profile_training(distribute="all", output=str(tmp_path))
    with pytest.raises(ValueError, match="unknown model 'resnet34'"):  # registered, but not 28x28
        profile_training(model="resnet34", output=str(tmp_path))
    with pytest.raises(ValueError, match="steps and batch_size must be positive"):
        profile_training(steps=0, output=str(tmp_path))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", "resnet"])
    with pytest.raises(FileNotFoundError, match="no profile at"):
        load_profile(str(tmp_path / "missing"))
    # The command line says what is wrong in one line, without a traceback.
    capsys.readouterr()  # (argparse's own usage message above)
    for argv, message in (
        (["--steps", "0"], "error: steps and batch_size must be positive"),
        (["--compare", str(tmp_path / "missing"), str(tmp_path)], "error: no profile at"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and len(err.splitlines()) == 1, err


def test_hlo_kinds_of_a_compiled_function():
    """XLA's own optimised HLO (TensorFlow ships with every backend): a dot, a reduction, a transpose copy."""
    import tensorflow as tf

    def f(a, b):
        product = tf.matmul(a, b)  # dot
        return product, tf.reduce_sum(tf.exp(a), axis=0), tf.transpose(b) * 1.0  # reduction, layout

    a, b = tf.ones((64, 32)), tf.ones((32, 48))
    hlo = tf.function(f, jit_compile=True).experimental_get_compiler_ir(a, b)(stage="optimized_hlo")
    instructions = op_table.parse_hlo(hlo)
    kinds = {info["kind"] for info in instructions.values()}
    assert {"matmul", "reduction"} <= kinds, instructions
    dots = [info for info in instructions.values() if info["kind"] == "matmul"]
    assert any(info["shape"] == "f32[64,48]" for info in dots), dots
    assert all(info["kind"] in (*op_table.KINDS, None) for info in instructions.values())


@pytest.mark.parametrize(
    "name, kind",
    [
        ("aten::addmm", "matmul"),
        ("aten::mm", "matmul"),
        ("aten::bmm", "matmul"),
        ("aten::linear", "matmul"),
        ("aten::sum", "reduction"),
        ("aten::native_layer_norm_backward", "reduction"),
        ("aten::_softmax", "reduction"),
        ("aten::_to_copy", "layout"),
        ("aten::transpose", "layout"),
        ("aten::t", "layout"),
        ("aten::cat", "layout"),
        ("aten::mul", "elementwise"),
        ("aten::gelu_backward", "elementwise"),
        ("aten::add_", "elementwise"),
        ("Optimizer.step#Adam.step", "other"),
    ],
)
def test_torch_op_kinds(name, kind):
    assert op_table.torch_kind(name) == kind


def test_summary_groups_per_step():
    table = {
        ("matmul", "dot", "f32[4,4]"): [{"dot.1", "dot.2"}, 4, 8e6],
        ("layout", "copy", "f32[4,4]"): [{"copy.3"}, 2, 2e6],
    }
    rows, kinds = op_table.summarize(table, steps=2)
    assert [(r["op"], r["instructions"], r["calls_per_step"], r["ms_per_step"]) for r in rows] == [
        ("dot", 2, 2.0, 4.0),
        ("copy", 1, 1.0, 1.0),
    ]
    assert kinds == {"matmul": 4.0, "layout": 1.0}
    assert rows[0]["share"] == pytest.approx(0.8)


def test_comparison_of_two_profiles():
    def profile(model, kinds, ops):
        rows = [{"kind": k, "op": op, "shape": shape, "ms_per_step": ms} for k, op, shape, ms in ops]
        return {"model": model, "depth": 6, "backend": "jax", "kinds": kinds, "ops": rows, "wall_ms_per_step": 9.0}

    first = profile(
        "vit", {"matmul": 5.0, "layout": 1.0}, [("matmul", "dot", "f32[2]", 5.0), ("layout", "copy", "f32[2]", 1.0)]
    )
    second = profile(
        "vit_bnffn",
        {"matmul": 5.5, "reduction": 2.0},
        [("matmul", "dot", "f32[2]", 5.5), ("reduction", "reduce", "f32[3]", 2.0)],
    )
    kind_rows, op_rows = op_table.compare(first, second)
    assert kind_rows == [("matmul", 5.0, 5.5), ("reduction", 0.0, 2.0), ("layout", 1.0, 0.0)]
    assert [(r["op"], r["first"], r["second"], r["change"]) for r in op_rows] == [
        ("reduce", 0.0, 2.0, 2.0),
        ("copy", 1.0, 0.0, -1.0),
        ("dot", 5.0, 5.5, 0.5),
    ]
    text = op_table.format_comparison(first, second)
    assert "| all operations | 6.00 | 7.50 | +1.50 |" in text
    assert "vit d6 jax (first)" in op_table.format_comparison(first, first)
