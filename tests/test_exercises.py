"""The classroom exercises: stubs fail, references pass, near misses fail with useful feedback,
hints come one at a time, the grader cannot be fooled, the command line behaves, and student
notebooks carry no solution code.

The checker is run with few hypothesis examples here (EXAMPLES) to keep the suite fast; every
wrong variant below already fails on the hand-picked inputs, which are always all run.
"""

import copy
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import picogpt.exercises as ex
from picogpt.errors import PicoGPTError
from picogpt.exercises.catalog import EXERCISES
from picogpt.exercises.student import CODE_STUB

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "exercises")
TEACHER = os.path.join(ROOT, "picogpt", "exercises", "teacher.ipynb")
EXAMPLES = 30
REQUIRED = ["softmax", "layernorm_forward", "layernorm_backward", "gelu_backward", "attention_forward",
            "attention_backward", "cross_entropy_backward", "top_p_filter", "adamw_step", "kv_cache_update"]
ALL = list(EXERCISES)        # the tests below run on every exercise, those to come too

sys.path.insert(0, FIXTURES)
import make_teacher_notebook  # noqa: E402


def stub_function(name):
    namespace = {}
    exec(ex.stub(name), namespace)
    return namespace[name]


def scaled(fn, factor=1.01):
    """fn with every output multiplied by `factor`: a subtly wrong answer (off by 1%)."""
    def wrong(*args):
        out = fn(*args)
        return tuple(o * factor for o in out) if isinstance(out, tuple) else out * factor
    return wrong


def cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "picogpt.exercises", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


# --- the catalog and the API ---------------------------------------------------------------

def test_every_required_exercise_exists_with_statement_stub_hints_and_reference():
    assert set(REQUIRED) <= set(ex.names())
    for name in ex.names():
        assert f"`{name}" in ex.statement(name) and f"hint {name}" in ex.statement(name)
        assert f"def {name}(" in ex.stub(name) and 'raise NotImplementedError("your code here")' in ex.stub(name)
        assert callable(ex.reference(name)) and ex.describe(name)
        assert ex.hint_count(name) >= 2 and all(ex.hint(name, n) for n in range(1, ex.hint_count(name) + 1))


def test_the_registry_finds_one_module_per_exercise_in_file_name_order():
    import pkgutil

    import picogpt.exercises.catalog as catalog

    modules = sorted(m.name for m in pkgutil.iter_modules(catalog.__path__) if catalog.MODULE_NAME.match(m.name))
    assert len(modules) == len(ex.names()) >= len(REQUIRED)
    for module, name in zip(modules, ex.names()):
        assert module.endswith(f"_{name}")          # ex03_layernorm_backward.py holds layernorm_backward


def test_adding_an_exercise_is_adding_a_file(tmp_path, monkeypatch):
    import picogpt.exercises.catalog as catalog

    (tmp_path / "ex99_double.py").write_text(
        "from picogpt.exercises.catalog.ex01_softmax import EXERCISE as SOFTMAX\n"
        "import dataclasses\n"
        "EXERCISE = dataclasses.replace(SOFTMAX, name='double', statement='## `double` {check}')\n")
    (tmp_path / "notes.py").write_text("raise RuntimeError('not an exercise: never imported')\n")
    monkeypatch.setattr(catalog, "__path__", list(catalog.__path__) + [str(tmp_path)])
    try:
        found = catalog.discover()
    finally:
        sys.modules.pop("picogpt.exercises.catalog.ex99_double", None)
    assert list(found) == ex.names() + ["double"]


def test_exercise_fields_have_real_types():
    import typing

    from picogpt.exercises.exercise import Exercise

    hints = typing.get_type_hints(Exercise)
    assert callable not in hints.values()
    assert typing.get_origin(hints["reference"]) is typing.get_origin(typing.Callable[..., int])


def test_module_doctest():
    import doctest

    failed, attempted = doctest.testmod(ex)
    assert attempted and not failed


def test_unknown_exercise_and_non_function_are_clear_errors():
    with pytest.raises(PicoGPTError, match="no exercise called 'sofmax'.*softmax"):
        ex.check("sofmax", print)
    with pytest.raises(PicoGPTError, match="needs a function"):
        ex.check("softmax", 42)


@pytest.mark.parametrize("name", ALL)
def test_stub_fails_with_a_clear_message(name):
    result = ex.check(name, stub_function(name), max_examples=EXAMPLES, verbose=False)
    assert not result and isinstance(result.error, NotImplementedError)
    assert "still the stub" in result.feedback and "hint:" in result.feedback


@pytest.mark.parametrize("name", ALL)
def test_reference_passes(name, capsys):
    result = ex.check(name, ex.reference(name), max_examples=EXAMPLES)
    assert result, result.feedback
    assert result.examples > EXAMPLES and "passed" in capsys.readouterr().out


@pytest.mark.parametrize("name", ALL)
def test_one_percent_off_fails_naming_the_input_and_the_error(name):
    result = ex.check(name, scaled(ex.reference(name)), max_examples=EXAMPLES, verbose=False)
    assert not result
    text = result.feedback
    assert "FAILED on input 1" in text
    first = EXERCISES[name].arg_names[0]   # which input (sft_targets' first is token ids)
    assert f"{first} = float64 array, shape" in text or f"{first} = int64 array, shape" in text
    assert "largest absolute error" in text and "largest relative error" in text  # by how much
    assert 9e-3 < result.max_rel_error < 1.1e-2
    assert "hint: " in text and "wrong" not in text.split("hint: ")[1][:6]


@pytest.mark.parametrize("name", ALL)
def test_each_classic_mistake_gets_its_own_hint(name):
    for hint, mistake in EXERCISES[name].mistakes:
        result = ex.check(name, mistake, max_examples=EXAMPLES, verbose=False)
        assert not result
        assert result.feedback.split("hint: ")[1].startswith(hint), (hint, result.feedback)


# --- hints for patterns --------------------------------------------------------------------

def _naive_softmax(x):
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_axis0(x):
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _naive_cross_entropy(logits, targets):
    d = _naive_softmax(logits)
    d[np.arange(len(d)), targets] -= 1
    return d / len(d)


def _top_p_without_ties(logits, p):
    probs = ex.reference("softmax")(logits)
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    keep = np.zeros(probs.shape, bool)
    np.put_along_axis(keep, order, np.cumsum(sorted_p, axis=-1) - sorted_p < p, axis=-1)
    return np.where(keep, logits, -np.inf)


def _kv_by_concatenate(k_cache, v_cache, k_new, v_new, length):
    return (np.concatenate([k_cache[:, :, :length], k_new], axis=2),
            np.concatenate([v_cache[:, :, :length], v_new], axis=2))


def _layernorm_backward_sum_axis0(dout, x, g, eps=1e-5):
    dx, _, _ = ex.reference("layernorm_backward")(dout, x, g, eps)
    n = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return dx, (dout * n).sum(axis=0), dout.sum(axis=0)


def _gelu_erf(dout, x):
    from math import erf, pi, sqrt
    phi = 0.5 * (1 + np.vectorize(erf)(x / sqrt(2)))
    return dout * (phi + x * np.exp(-0.5 * x * x) / sqrt(2 * pi))


@pytest.mark.parametrize("name, fn, where, hint", [
    ("softmax", _naive_softmax, "large logits", "Subtract the row max"),
    ("softmax", _softmax_axis0, "a small 2-D input", "LAST axis"),
    ("cross_entropy_backward", _naive_cross_entropy, "large logits", "Subtract the row max"),
    ("top_p_filter", _top_p_without_ties, "ties", "keep the ties"),
    ("kv_cache_update", _kv_by_concatenate, "empty cache", "IN PLACE"),
    ("layernorm_backward", _layernorm_backward_sum_axis0, "(B, T, C)", "sum over EVERY axis but the last"),
    ("gelu_backward", _gelu_erf, "x from -4 to 4", "tanh approximation"),
])
def test_error_patterns_get_specific_hints(name, fn, where, hint):
    result = ex.check(name, fn, max_examples=EXAMPLES, verbose=False)
    assert not result
    header, hint_text = result.feedback.split("\n")[0], result.feedback.split("hint: ")[1]
    assert where in header and hint in hint_text, result.feedback


def test_naive_softmax_reports_nan_on_large_logits():
    result = ex.check("softmax", _naive_softmax, max_examples=EXAMPLES, verbose=False)
    assert "1000." in result.feedback and "NaN or inf where the expected value is finite" in result.feedback
    assert np.abs(result.inputs["x"]).max() >= 1000


def test_an_exception_is_reported_with_its_input_and_last_line():
    def broken(x):
        return x @ np.ones((7, 7))

    result = ex.check("softmax", broken, max_examples=EXAMPLES, verbose=False)
    assert not result and isinstance(result.error, ValueError)
    assert "your function raised ValueError: matmul" in result.feedback
    assert "x = float64 array, shape (2, 3)" in result.feedback and "return x @ np.ones((7, 7))" in result.feedback


def test_wrong_return_forms_are_explained():
    none = ex.check("adamw_step", lambda *a: None, max_examples=0, verbose=False)
    assert "returned None" in none.feedback
    pair = ex.check("softmax", lambda x: (ex.reference("softmax")(x), None), max_examples=0, verbose=False)
    assert "return just the array" in pair.feedback
    two = ex.check("layernorm_backward", lambda *a: ex.reference("layernorm_backward")(*a)[:2], max_examples=0,
                   verbose=False)
    assert "must return 3 values (dx, dg, db)" in two.feedback


def test_a_bug_only_random_inputs_reach_is_found_shrunk_and_reproducible():
    def wrong_for_wide_rows(x):          # every hand-picked input has at most 4 columns
        p = ex.reference("softmax")(x)
        return p * 1.01 if x.shape[-1] >= 5 else p

    first = ex.check("softmax", wrong_for_wide_rows, max_examples=60, verbose=False)
    second = ex.check("softmax", wrong_for_wide_rows, max_examples=60, verbose=False)
    assert not first and "drawn by hypothesis" in first.feedback
    assert first.feedback == second.feedback                       # same seed, same inputs
    assert first.inputs["x"].shape[-1] == 5                        # shrunk to the smallest failing width


def test_tolerance_passes_rounding_but_not_small_errors():
    ref = ex.reference("softmax")
    assert ex.check("softmax", lambda x: ref(x) * (1 + 1e-12), max_examples=EXAMPLES, verbose=False)
    assert not ex.check("softmax", lambda x: ref(x) * (1 + 1e-4), max_examples=EXAMPLES, verbose=False)


def test_a_function_that_changes_its_input_in_place_fails_even_with_the_right_output():
    def scribbles(x):
        p = ex.reference("softmax")(x)
        x[...] = 0.0                        # the reference never sees it: only the student's copy changes
        return p

    def stable_in_place(x):                 # right values, but the caller's logits are gone
        x -= x.max(axis=-1, keepdims=True)
        np.exp(x, out=x)
        x /= x.sum(axis=-1, keepdims=True)
        return x

    for fn in (scribbles, stable_in_place):
        result = ex.check("softmax", fn, max_examples=EXAMPLES, verbose=False)
        assert not result and "FAILED on input 1" in result.feedback
        assert "changed its argument 'x' in place" in result.feedback and "x.copy()" in result.feedback


def test_only_the_arguments_an_exercise_allows_may_change():
    def adamw_in_place(p, g, m, v, t, lr, betas, eps, weight_decay):      # allowed: p, m, v
        new_p, new_m, new_v = ex.reference("adamw_step")(p, g, m, v, t, lr, betas, eps, weight_decay)
        p[...], m[...], v[...] = new_p, new_m, new_v
        return p, m, v

    def adamw_clipping_g(p, g, m, v, t, lr, betas, eps, weight_decay):    # g is the caller's
        out = ex.reference("adamw_step")(p, g, m, v, t, lr, betas, eps, weight_decay)
        g *= 0.5
        return out

    assert ex.check("adamw_step", adamw_in_place, max_examples=EXAMPLES, verbose=False)
    clipped = ex.check("adamw_step", adamw_clipping_g, max_examples=EXAMPLES, verbose=False)
    assert not clipped and "changed its argument 'g' in place" in clipped.feedback

    def kv_scribbling_k_new(k_cache, v_cache, k_new, v_new, length):
        out = ex.reference("kv_cache_update")(k_cache, v_cache, k_new, v_new, length)
        k_new[...] = 0.0
        return out

    kv = ex.check("kv_cache_update", kv_scribbling_k_new, max_examples=EXAMPLES, verbose=False)
    assert not kv and "changed its argument 'k_new' in place" in kv.feedback


# --- progressive hints ---------------------------------------------------------------------

# What each derivation arrives at: in a later hint, never in the statement, the stub or hint 1.
RESULTS = {
    "layernorm_backward": "n * mean(dn * n)",
    "gelu_backward": "3 * 0.044715 x**2",
    "attention_backward": "dP - sum(dP * P",
    "cross_entropy_backward": "softmax(logits) - onehot(targets)",
    "adamw_step": "1 - b1**t",
    "softmax": "x - max(x)",
    "repetition_penalty": "logits * penalty, logits / penalty",
    "adapter_backward": "dh = dout + dz @ Wd^T",
    "classifier_backward": "dhidden[np.arange(B), lengths - 1] = dlogits @ W",
    "sft_targets": "np.where(mask[1:], ids[1:], -100)",
    "distill_kl_backward": "T * (softmax(student / T) - softmax(teacher / T)) / N",
}


@pytest.mark.parametrize("name, result", sorted(RESULTS.items()))
def test_the_statement_asks_for_the_derivation_and_a_later_hint_gives_it(name, result):
    assert result not in ex.statement(name) and result not in ex.stub(name)
    assert result not in ex.hint(name, 1)
    assert any(result in ex.hint(name, n) for n in range(2, ex.hint_count(name) + 1))


def test_feedback_on_a_wrong_answer_gives_the_first_hint_not_the_result():
    def unrelated(dout, x):
        return dout * np.sin(x)

    text = ex.check("gelu_backward", unrelated, max_examples=0, verbose=False).feedback
    assert ex.hint("gelu_backward", 1) in text and "hint gelu_backward 2" in text
    assert RESULTS["gelu_backward"] not in text


def test_hints_out_of_range_are_one_sentence():
    with pytest.raises(PicoGPTError, match="softmax has hints 1 to 3; there is no hint 4"):
        ex.hint("softmax", 4)
    with pytest.raises(PicoGPTError, match="no hint 0"):
        ex.hint("softmax", 0)


def test_cli_hint_reveals_one_more_each_time(capsys):
    from picogpt.exercises.__main__ import main

    assert main(["hint", "layernorm_backward"]) == 0
    first = capsys.readouterr().out
    assert ex.hint("layernorm_backward", 1) in first and ex.hint("layernorm_backward", 2) not in first
    assert "hint layernorm_backward 2" in first
    assert main(["hint", "layernorm_backward", "3"]) == 0
    last = capsys.readouterr().out
    assert all(ex.hint("layernorm_backward", n) in last for n in (1, 2, 3)) and "Still stuck" not in last
    assert main(["hint", "layernorm_backward", "4"]) == 2
    assert "there is no hint 4" in capsys.readouterr().err


# --- the teacher's notebook ----------------------------------------------------------------

def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_teacher_notebook_is_up_to_date_with_the_catalog():
    with open(TEACHER, encoding="utf-8") as f:
        assert f.read() == make_teacher_notebook.render(), \
            "run `PYTHONPATH=. python tests/fixtures/exercises/make_teacher_notebook.py` to regenerate it"


def test_teacher_notebook_solutions_pass_and_have_no_outputs(monkeypatch, capsys):
    real_check = ex.check
    seen = []

    def quick_check(name, fn, max_examples=None, seed=0, verbose=True):
        result = real_check(name, fn, max_examples=EXAMPLES, seed=seed, verbose=verbose)
        seen.append(name)
        assert result, result.feedback
        return result

    monkeypatch.setattr(ex, "check", quick_check)
    nb = _load(TEACHER)
    namespace = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
            exec(_source(cell), namespace)
    assert set(seen) == set(ALL)


# --- make-student --------------------------------------------------------------------------

def _code_cell(source, outputs=True, metadata=None):
    return {"cell_type": "code", "execution_count": 3 if outputs else None, "id": f"c{abs(hash(source)) % 10**8}",
            "metadata": metadata or {}, "source": source,
            "outputs": [{"output_type": "stream", "name": "stdout", "text": ["secret\n"]}] if outputs else []}


def _notebook(cells):
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _write(path, nb):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(nb, f)
    return str(path)


def test_make_student_from_the_teacher_template(tmp_path):
    dst = tmp_path / "student.ipynb"
    summary = ex.make_student(TEACHER, str(dst))
    assert summary["solutions"] == len(ALL) and summary["hidden_tests"] == len(ALL)
    nb = _load(dst)
    text = "\n".join(_source(c) for c in nb["cells"])
    code = "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "code")
    stubs = "".join(ex.stub(name) for name in ALL)
    for answer in make_teacher_notebook.ANSWERS.values():        # no solution line survives
        for line in answer.splitlines():                        # (a docstring may quote the maths)
            assert line.strip() in stubs or line.strip() not in code, line
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS", "seed=1"):
        assert marker not in text
    by_id = {c["id"]: c for c in nb["cells"]}
    for name in ALL:                                              # each solution cell is exactly the stub
        assert _source(by_id[f"{name}-solution"]) == EXERCISES[name].stub_function.rstrip("\n")
        assert _source(by_id[f"{name}-check"]) == f'result = check("{name}", {name})'
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.read(str(dst), as_version=4))


def test_make_student_agrees_with_nbgrader(tmp_path):
    """nbgrader's own preprocessors, metadata checks included, give the same student notebook
    (up to the wording of the stub). Skipped where nbgrader is not installed."""
    pytest.importorskip("nbgrader")
    import nbformat
    from nbgrader.preprocessors import CheckCellMetadata, ClearHiddenTests, ClearOutput, ClearSolutions

    theirs, resources = nbformat.read(TEACHER, as_version=4), {}
    for step in (CheckCellMetadata(), ClearSolutions(), ClearHiddenTests(), ClearOutput()):
        theirs, resources = step.preprocess(theirs, resources)
    ex.make_student(TEACHER, str(tmp_path / "s.ipynb"))
    ours = nbformat.read(str(tmp_path / "s.ipynb"), as_version=4)
    for a, b in zip(theirs.cells, ours.cells):
        stubbed = re.sub(r"( *)# YOUR CODE HERE\n *raise NotImplementedError\(\)", r"\1" + CODE_STUB, a.source)
        assert stubbed == b.source


def test_make_student_regions_indentation_outputs_and_metadata(tmp_path):
    code = ("def f(x):\n"
            "    y = 1\n"
            "    ### BEGIN SOLUTION\n"
            "    return secret_answer(x)\n"
            "    ### END SOLUTION\n"
            "\n"
            "#### BEGIN SOLUTION\n"
            "top_level_secret = 1\n"
            "### END SOLUTION")
    tests = "assert f(1)\n### BEGIN HIDDEN TESTS\nassert hidden_secret()\n### END HIDDEN TESTS"
    markdown = {"cell_type": "markdown", "metadata": {}, "id": "md",
                "source": ["Why?\n", "### BEGIN SOLUTION\n", "Because secret reasons.\n", "### END SOLUTION\n"]}
    whole = _code_cell("secret_whole_cell = 1", metadata={"nbgrader": {"solution": True, "grade_id": "w"}})
    untouched = {"cell_type": "markdown", "metadata": {"tags": ["keep"]}, "id": "plain", "source": "# Title"}
    src = _write(tmp_path / "t.ipynb", _notebook([_code_cell(code), _code_cell(tests), markdown, whole, untouched]))
    dst = tmp_path / "s.ipynb"
    summary = ex.make_student(src, str(dst))
    cells = _load(dst)["cells"]
    assert summary == {"solutions": 4, "hidden_tests": 1, "cells": 4}
    assert _source(cells[0]) == ("def f(x):\n    y = 1\n    raise NotImplementedError(\"your code here\")\n\n"
                                 "raise NotImplementedError(\"your code here\")")
    assert _source(cells[1]) == "assert f(1)"
    assert cells[2]["source"] == ["Why?\n", "YOUR ANSWER HERE\n"]               # list form kept
    assert _source(cells[3]) == 'raise NotImplementedError("your code here")'  # nbgrader solution cell
    assert cells[4] == untouched
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in cells if c["cell_type"] == "code")
    assert "secret" not in json.dumps(cells)


@pytest.mark.parametrize("source, message", [
    ("### BEGIN SOLUTION\nx = 1", "line 1: '### BEGIN SOLUTION' has no '### END SOLUTION'"),
    ("x = 1\n### END SOLUTION", "line 2: '### END SOLUTION' without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "line 2: a second '### BEGIN SOLUTION'"),
    ("### BEGIN HIDDEN TESTS\nassert x", "'### BEGIN HIDDEN TESTS' has no '### END HIDDEN TESTS'"),
])
def test_make_student_refuses_unbalanced_markers(tmp_path, source, message):
    src = _write(tmp_path / "t.ipynb", _notebook([_code_cell("ok = 1"), _code_cell(source)]))
    with pytest.raises(PicoGPTError, match=re.escape(message)):
        ex.make_student(src, str(tmp_path / "s.ipynb"))
    assert not (tmp_path / "s.ipynb").exists()


def test_make_student_refuses_what_is_not_a_notebook(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    (tmp_path / "x.txt").write_text("hello")
    for path, message in ((tmp_path / "missing.ipynb", "no such notebook"), (tmp_path / "x.json", "format 4"),
                          (tmp_path / "x.txt", "not JSON")):
        with pytest.raises(PicoGPTError, match=message):
            ex.make_student(str(path), str(tmp_path / "s.ipynb"))
    with pytest.raises(PicoGPTError, match="teacher's notebook itself"):
        ex.make_student(TEACHER, TEACHER)


def test_make_student_works_without_nbformat(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nbformat", None)     # `import nbformat` now fails
    dst = tmp_path / "s.ipynb"
    ex.make_student(TEACHER, str(dst))
    assert "BEGIN SOLUTION" not in dst.read_text()


# --- the command line ----------------------------------------------------------------------

def test_cli_list_and_show():
    listed = cli("list")
    assert listed.returncode == 0
    for name in ALL:
        assert name in listed.stdout
    shown = cli("show", "layernorm_backward")
    assert shown.returncode == 0
    assert ex.statement("layernorm_backward") in shown.stdout and ex.stub("layernorm_backward") in shown.stdout


def test_cli_check_exit_codes(tmp_path, capsys):
    from picogpt.exercises.__main__ import main

    good = tmp_path / "good.py"
    good.write_text(ex.stub("softmax").replace('    raise NotImplementedError("your code here")',
                                                "    e = np.exp(x - x.max(axis=-1, keepdims=True))\n"
                                                "    return e / e.sum(axis=-1, keepdims=True)"))
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy as np\n\n\ndef solution(x):\n"
                   "    e = np.exp(x)\n    return e / e.sum(-1, keepdims=True)\n")
    ok = cli("check", "softmax", str(good), "--examples", "10")          # from a shell, end to end
    assert ok.returncode == 0 and "passed" in ok.stdout and "Traceback" not in ok.stderr, ok.stdout + ok.stderr
    assert main(["check", "softmax", str(bad), "--examples", "10"]) == 1
    assert "Subtract the row max" in capsys.readouterr().out
    assert main(["check", "sofmax", str(good)]) == 2
    assert "no exercise called 'sofmax'" in capsys.readouterr().err


def test_cli_check_usage_errors_and_files_that_do_not_run(tmp_path, capsys):
    from picogpt.exercises.__main__ import main

    nothing = tmp_path / "nothing.py"
    nothing.write_text("x = 1\n")
    broken = tmp_path / "broken.py"
    broken.write_text("import numpy as np\n\ndef softmax(x:\n    return x\n")
    raises = tmp_path / "raises.py"
    raises.write_text("import numpy as np\n\nscale = 1 / 0\n")
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(3)\n")
    assert main(["check", "softmax", str(tmp_path / "missing.py")]) == 2
    assert main(["check", "softmax", str(nothing)]) == 2
    assert main(["check", "softmax", str(nothing), "--timeout", "0"]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "defines no function called 'softmax'" in err and "--timeout must be" in err
    assert main(["check", "softmax", str(broken)]) == 1
    out = capsys.readouterr().out                    # the feedback shows the file, the line and the spot
    assert f'File "{broken}", line 3' in out and "def softmax(x:" in out and "^" in out and "SyntaxError" in out
    assert main(["check", "softmax", str(raises)]) == 1
    out = capsys.readouterr().out
    assert "line 3" in out and "scale = 1 / 0" in out and "ZeroDivisionError" in out
    assert main(["check", "softmax", str(exits)]) == 1
    out = capsys.readouterr().out
    assert "SystemExit: 3" in out and "Traceback" not in out
    assert main(["stub", "softmax"]) == 0 and capsys.readouterr().out == ex.stub("softmax")
    with pytest.raises(SystemExit) as usage:
        main(["check", "softmax"])
    assert usage.value.code == 2


# --- the grader cannot be fooled -----------------------------------------------------------

GOOD_SOFTMAX = ("import numpy as np\n\ndef softmax(x):\n"
                "    e = np.exp(x - x.max(axis=-1, keepdims=True))\n"
                "    return e / e.sum(axis=-1, keepdims=True)\n")


@pytest.mark.parametrize("source, what", [
    ("import os\nos._exit(0)\n", "exit status 0"),                                       # before any check
    (GOOD_SOFTMAX.replace("    e = np", "    import os; os._exit(0)\n    e = np"), "exit status 0"),  # during
    (GOOD_SOFTMAX + "import sys\nprint('softmax: passed all 67 inputs. Well done!')\nsys.stdout.flush()\n"
     "import os\nos._exit(0)\n", "exit status 0"),                                        # a fake verdict printed
    ("import json, os, sys\njson.dump({'nonce': 'guess', 'verdict': 'passed', 'feedback': 'passed'},"
     " open(sys.argv[3], 'w'))\nos._exit(0)\n", "lacks this run's random nonce"),        # a forged record
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "killed by signal SIGKILL"),
])
def test_the_grader_needs_positive_evidence_of_a_pass(tmp_path, capsys, source, what):
    from picogpt.exercises.__main__ import main

    sub = tmp_path / "sub.py"
    sub.write_text(source)
    assert main(["check", "softmax", str(sub), "--examples", "5"]) == 1
    out = capsys.readouterr()
    assert "FAILED" in out.out and what in out.out and "Traceback" not in out.err


@pytest.mark.parametrize("source, where", [
    (GOOD_SOFTMAX.replace("    e = np", "    while True:\n        pass\n    e = np"),
     "running your function on input 1 (a small 2-D input)"),
    ("import time\nwhile True:\n    time.sleep(0.01)\n", "loading"),
])
@pytest.mark.slow
def test_the_grader_times_out_and_says_where(tmp_path, source, where):
    import time

    sub = tmp_path / "loops.py"
    sub.write_text(source)
    start = time.monotonic()
    out = cli("check", "softmax", str(sub), "--timeout", "6")
    assert out.returncode == 1 and time.monotonic() - start < 60
    assert "did not finish within 6 s (--timeout)" in out.stdout and where in out.stdout, out.stdout


def test_checking_from_a_shell_without_hypothesis_is_one_sentence(tmp_path):
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / "hypothesis.py").write_text("raise ImportError('not installed')\n")   # shadows it
    sub = tmp_path / "good.py"
    sub.write_text(GOOD_SOFTMAX)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "hidden"), ROOT]))
    out = subprocess.run([sys.executable, "-m", "picogpt.exercises", "check", "softmax", str(sub)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "hypothesis, which is not installed" in out.stderr, out.stdout + out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_the_grader_stops_what_the_submission_started(tmp_path):
    """The child's own children (a busy subprocess) are stopped with it: nothing keeps running."""
    marker = tmp_path / "still-running"
    (tmp_path / "sleeper.py").write_text(
        f"import pathlib, time\ntime.sleep(6)\npathlib.Path({str(marker)!r}).touch()\n")
    sub = tmp_path / "spawns.py"
    sub.write_text("import os, subprocess, sys\n"
                   "subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), 'sleeper.py')])\n"
                   "while True:\n    pass\n")
    out = cli("check", "softmax", str(sub), "--timeout", "3")
    assert out.returncode == 1 and "did not finish" in out.stdout
    import time
    time.sleep(5)
    assert not marker.exists()


def test_cli_make_student_and_teacher(tmp_path):
    copy_path = tmp_path / "course.ipynb"
    from picogpt.exercises.__main__ import main

    assert main(["teacher", str(copy_path)]) == 0
    assert _load(copy_path) == _load(TEACHER)
    assert main(["teacher", str(copy_path)]) == 2                  # never overwrites
    made = cli("make-student", str(copy_path), str(tmp_path / "student.ipynb"))
    assert made.returncode == 0 and f"{len(ALL)} solution regions replaced" in made.stdout
    assert "BEGIN SOLUTION" not in (tmp_path / "student.ipynb").read_text()
    unbalanced = tmp_path / "unbalanced.ipynb"
    nb = copy.deepcopy(_load(copy_path))
    nb["cells"][3]["source"] = [line for line in nb["cells"][3]["source"] if "END SOLUTION" not in line]
    _write(unbalanced, nb)
    refused = cli("make-student", str(unbalanced), str(tmp_path / "s2.ipynb"))
    assert refused.returncode == 2 and "cell 4" in refused.stderr and "Traceback" not in refused.stderr


def test_make_student_and_teacher_refuse_to_overwrite_unless_forced(tmp_path, capsys):
    from picogpt.exercises.__main__ import main

    course, student = tmp_path / "course.ipynb", tmp_path / "student.ipynb"
    assert main(["teacher", str(course)]) == 0
    student.write_text("my own notes")
    assert main(["make-student", str(course), str(student)]) == 2
    assert main(["teacher", str(course)]) == 2
    err = capsys.readouterr().err
    assert err.count("already exists: choose another name, or pass --force") == 2
    assert student.read_text() == "my own notes"
    assert main(["make-student", str(course), str(student), "--force"]) == 0
    assert main(["teacher", str(course), "--force"]) == 0
    assert "BEGIN SOLUTION" not in student.read_text()
    with pytest.raises(PicoGPTError, match="already exists"):
        ex.make_student(str(course), str(student))
    ex.make_student(str(course), str(student), force=True)


@pytest.mark.parametrize("args, message", [
    (["make-student", "COURSE", "."], ". is a folder: name the notebook to write in it"),
    (["make-student", "COURSE", "FOLDER"], "is a folder"),
    (["make-student", "COURSE", ""], "needs a file name, e.g. student.ipynb"),
    (["teacher", ""], "needs a file name, e.g. course.ipynb"),
    (["teacher", "."], ". is a folder"),
    (["teacher", "FOLDER/"], "is a folder"),
])
def test_an_output_that_is_a_folder_or_empty_is_one_sentence(tmp_path, capsys, args, message):
    from picogpt.exercises.__main__ import main

    course = tmp_path / "course.ipynb"
    course.write_text(open(TEACHER, encoding="utf-8").read())
    args = [a.replace("COURSE", str(course)).replace("FOLDER", str(tmp_path)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_make_student_to_a_folder_from_a_shell_is_one_sentence(tmp_path):
    course = tmp_path / "course.ipynb"
    course.write_text(open(TEACHER, encoding="utf-8").read())
    out = subprocess.run([sys.executable, "-m", "picogpt.exercises", "make-student", str(course), "."],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert out.returncode == 2 and out.stderr.startswith("error: . is a folder") and "Traceback" not in out.stderr
