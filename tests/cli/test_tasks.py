"""``regimen methods --task NAME`` lists the methods that serve a task; ``regimen info`` lists the tasks."""

import pytest

import regimen.method
from regimen.cli import main
from regimen.method import Method, list_methods
from regimen.tasks import get_task, list_tasks
from tests.cli.helpers import run_cli


def _serves(method_cls, task_cls) -> bool:
    """The rule written out: a method serves a task when it takes any input kind or the task's, and any target
    kind or the task's."""
    return ((not method_cls.inputs or task_cls.input_kind in method_cls.inputs)
            and (not method_cls.targets or task_cls.target_kind in method_cls.targets))


@pytest.mark.parametrize("task", list(list_tasks()))
def test_methods_task_lists_exactly_the_registered_methods_that_serve_it(capsys, task):
    code, out, _ = run_cli(capsys, "methods", "--task", task)
    assert code == 0
    expected = [name for name, cls in list_methods().items() if _serves(cls, get_task(task))]
    assert [line.split()[0] for line in out.splitlines()] == expected
    assert expected  # every task has methods (those that take any input)


def _fake(name: str, inputs: tuple[str, ...] = (), targets: tuple[str, ...] = ()) -> type[Method]:
    return type(f"Fake{name.title()}", (Method,), {"name": name, "inputs": inputs, "targets": targets,
                                                  "__doc__": f"A {name} method."})


def test_methods_task_filters_by_input_and_target_kind(capsys, monkeypatch):
    fakes = {"any": _fake("any"), "image_only": _fake("image_only", inputs=("image",)),
             "image_or_vector": _fake("image_or_vector", inputs=("image", "vector")),
             "labels_only": _fake("labels_only", targets=("labels",)),
             "soft_targets": _fake("soft_targets", targets=("soft",))}
    monkeypatch.setattr(regimen.method, "list_methods", lambda: fakes)
    listed = {}
    for task in ("image_classification", "classification"):
        code, out, _ = run_cli(capsys, "methods", "--task", task)
        assert code == 0
        listed[task] = [line.split()[0] for line in out.splitlines()]
    assert listed["image_classification"] == ["any", "image_only", "image_or_vector", "labels_only"]
    assert listed["classification"] == ["any", "image_or_vector", "labels_only"]  # vector inputs, class labels
    code, out, _ = run_cli(capsys, "methods")
    assert [line.split()[0] for line in out.splitlines()] == list(fakes)  # no --task: every method


def test_methods_with_an_unknown_task_is_one_line_naming_the_known_tasks(capsys):
    code, out, err = run_cli(capsys, "methods", "--task", "nope")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "unknown task 'nope'" in err and "internal error" not in err
    assert all(name in err for name in list_tasks())


def test_info_lists_every_task_with_its_summary_and_kinds(capsys):
    assert main(["info"]) == 0
    tasks_section = capsys.readouterr().out.split("\n\n", 1)[1].splitlines()
    assert tasks_section[0].startswith("tasks")
    rows = {line.split()[0]: line.split(None, 1)[1] for line in tasks_section[1:]}
    assert list(rows) == list(list_tasks())
    for name, cls in list_tasks().items():
        assert rows[name] == f"{cls.summary()} ({cls.input_kind} -> {cls.target_kind})"
