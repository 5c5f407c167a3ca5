"""Plugin contracts: a plugin's hook or base-class method that breaks its documented contract
ends in one :class:`~longllava_sdk.errors.PluginError` line naming the distribution, the class
and the method, before any training work.

The contracts themselves (arguments, return type, default) are written once, in
``docs/plugin_hooks.md``; this module checks the ones the engine relies on:

* :func:`check_head` runs a head class through every method the engine will call (on a
  ``(1, 3, H)`` dummy batch) when a run or a pipeline picks it: ``check_labels`` returns a
  list of strings, the head builds, ``config_dict`` is JSON and rebuilds it, ``forward``
  gives ``(1, num_labels)`` logits, ``encode_targets`` / ``loss`` / ``predict`` /
  ``metrics`` / ``describe`` return what they must.
* :func:`call_method` calls one plugin method and checks its result.
* :meth:`longllava_sdk.plugin_manager.LongLLaVAPluginManager.call_checked` does the same for
  the hooks the engine calls at run time.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
from typing import TYPE_CHECKING, Any, Callable

from .errors import LongLLaVAError, PluginError

if TYPE_CHECKING:
    from .heads import TaskHead

#: Where the contracts are written.
CONTRACTS_DOC = "docs/plugin_hooks.md"


def describe_owner(obj: Any) -> str:
    """``distribution example-plugin 0.3.1`` (or ``module my_plugin``) for a class or function."""
    module = getattr(obj, "__module__", None) or type(obj).__module__
    top = module.split(".")[0]
    for ep in importlib.metadata.entry_points(group="longllava_sdk"):  # the distribution that announces it
        if ep.module.split(".")[0] == top and ep.dist is not None:
            return f"distribution {ep.dist.name} {ep.dist.version}"
    try:
        dists = importlib.metadata.packages_distributions().get(top, [])
    except Exception:  # noqa: BLE001 - broken metadata must not hide the real problem
        dists = []
    if dists:
        try:
            return f"distribution {dists[0]} {importlib.metadata.version(dists[0])}"
        except importlib.metadata.PackageNotFoundError:
            return f"distribution {dists[0]}"
    return f"module {module}"


def contract_error(owner: Any, method: str, problem: str, anchor: str = "") -> PluginError:
    """``PluginError: distribution X 1.0: HeadClass.check_labels returned None; it must return ...``."""
    name = getattr(owner, "__qualname__", None) or type(owner).__qualname__
    see = f" (see {CONTRACTS_DOC}{'#' + anchor if anchor else ''})"
    return PluginError(f"{describe_owner(owner)}: {name}.{method} {problem}{see}")


def call_method(owner: Any, method: str, *args: Any, returns: str, check: Callable[[Any], bool],
                anchor: str = "", passthrough: tuple[type[BaseException], ...] = (LongLLaVAError,)) -> Any:
    """``getattr(owner, method)(*args)`` (``owner(*args)`` for ``__init__``), checked: an
    exception other than ``passthrough`` or a result for which ``check`` is false becomes
    :func:`contract_error` (``returns`` says what was due)."""
    try:
        result = owner(*args) if method == "__init__" else getattr(owner, method)(*args)
    except passthrough:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's failure, attributed to it
        raise contract_error(owner, method, f"raised {type(exc).__name__}: {exc}", anchor) from exc
    if not check(result):
        raise contract_error(owner, method, f"returned {_short(result)}; it must return {returns}", anchor)
    return result


def is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_labels(head_cls: type[TaskHead], labels: list[str]) -> list[str]:
    """``head_cls.check_labels(labels)``, which must return a list of problem strings."""
    return call_method(head_cls, "check_labels", list(labels), returns="a list of problem strings (empty: fine)",
                       check=is_str_list, anchor="taskhead")


def check_head(head_cls: type[TaskHead], labels: list[str], hidden_size: int = 8) -> None:
    """Run every method of a head class the engine calls, on a dummy batch; raise on a violation.

    User errors (a :class:`~longllava_sdk.errors.ConfigError` from the head about the labels)
    pass through unchanged; anything else a method raises or returns against its contract is
    a :class:`PluginError` naming the distribution, the class and the method.
    """
    import torch

    problems = check_labels(head_cls, labels)
    if problems:
        return  # the caller reports the label problems as a configuration error
    if head_cls.problem_type == "generate":
        return  # answers through the language model: no head weights, targets or metrics
    with torch.no_grad():
        _run_head(head_cls, labels, hidden_size)


def _run_head(head_cls: type[TaskHead], labels: list[str], hidden_size: int) -> None:
    import torch
    head = call_method(head_cls, "__init__", hidden_size, list(labels), returns="a TaskHead instance",
                       check=lambda h: h is not None, anchor="taskhead")
    config = call_method(head, "config_dict", returns="a JSON-ready dict", check=_is_json_dict, anchor="taskhead")
    call_method(head_cls, "from_config", config, returns=f"a {head_cls.__qualname__}",
                check=lambda h: isinstance(h, head_cls), anchor="taskhead")
    head.eval()
    hidden = torch.zeros(1, 3, hidden_size)
    mask = torch.ones(1, 3, dtype=torch.long)
    logits = call_method(head, "forward", hidden, mask, returns=f"a float tensor of shape (1, {head.num_labels})",
                         check=lambda t: isinstance(t, torch.Tensor) and tuple(t.shape) == (1, head.num_labels),
                         anchor="taskhead")
    described = call_method(head, "describe", logits[0], returns="a JSON-ready dict", check=_is_json_dict,
                            anchor="taskhead")
    del described
    predictions = call_method(head, "predict", logits, returns="a tensor with one row per sample",
                              check=lambda t: isinstance(t, torch.Tensor) and t.shape[:1] == (1,), anchor="taskhead")
    try:  # a head with its own label format may not accept the first label as a row: nothing more to run
        target = head.encode_targets([labels[0]], None)
    except (ValueError, LongLLaVAError):
        return
    except Exception as exc:  # noqa: BLE001
        raise contract_error(head, "encode_targets", f"raised {type(exc).__name__}: {exc} (only ValueError "
                             "means 'this row does not fit')", "taskhead") from exc
    try:
        targets = torch.tensor([target])
    except Exception as exc:  # noqa: BLE001
        raise contract_error(head, "encode_targets", f"returned {_short(target)}, which torch.tensor cannot stack "
                             "(return an int, a float or a list of them)", "taskhead") from exc
    call_method(head, "loss", logits, targets, returns="a scalar tensor",
                check=lambda t: isinstance(t, torch.Tensor) and t.dim() == 0, anchor="taskhead")
    call_method(head, "metrics", predictions, targets, returns="a dict of metric name -> number",
                check=_is_metrics, anchor="taskhead")


def _is_json_dict(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _is_metrics(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) or
        isinstance(v, float) and math.isnan(v) for k, v in value.items())


def _short(value: Any) -> str:
    text = repr(value) if value is None or isinstance(value, (str, int, float, bool)) else \
        f"a {type(value).__module__}.{type(value).__qualname__}" if not isinstance(value, (list, tuple, dict)) \
        else f"{type(value).__name__} {value!r}"
    return text if len(text) <= 120 else text[:117] + "..."
