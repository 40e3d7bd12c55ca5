"""Loading a suite file: TOML -> schema (harness.suite.schema) -> grid expansion into resolved runs.

A run's id is `<name>-<axis><value>...` (e.g. `sg-gs0.3-gw0.7-omega1.5`). A run may change [sampler] fields for
itself alone with `sampler = {kind = ..., steps = ...}`. Every mistake in a suite is reported as one HarnessError
naming the file, the table or run, and the field, before anything runs.
"""

from __future__ import annotations

import copy
import itertools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.errors import HarnessError
from harness.guidance import METHODS, GuidanceSpec, Method, Schedule
from harness.models import FAMILIES, ConfigError, ModelSpec, family_of
from harness.models.adapters import DEFAULT_DROPPED
from harness.models.batching import FORWARD_ROWS
from harness.sampling import SamplerSpec
from harness.suite.runs import Run, Suite, config_hash
from harness.suite.schema import GammaTable, ModelTable, RunTable, SuiteFile

# Grid axes in the order their values appear in a run id, with the id's abbreviation of each.
GRID_AXES = {"gamma_strong": "gs", "gamma_weak": "gw", "omega": "omega", "interval": "int", "cfg_channels": "ch",
             "weak_model": "weak", "seed": "seed"}
# Methods whose weak branch runs on the weak model.
_AG_METHODS = tuple(m for m, entry in METHODS.items() if entry.uses_weak_model)
_SAME_SPACE = ("input_size", "in_channels", "num_classes", "patch_size")  # AG's two models must agree on these
_EDM_SAMPLER_FIELDS = ("sigma_min", "sigma_max", "rho")


#################################################################################
#                                  Loading                                      #
#################################################################################


class _Where:
    """Builds the one error message of a suite: file, then table or run, then field."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.data = data

    def run(self, index: int, run_id: str | None = None) -> str:
        runs = self.data.get("runs")
        name = runs[index].get("name") if isinstance(runs, list) and isinstance(runs[index], dict) else None
        label = run_id or name
        return f"run {label!r} ([[runs]] #{index + 1})" if label else f"[[runs]] #{index + 1}"

    def error(self, where: str, fld: str | None, message: str) -> HarnessError:
        field_part = f" field {fld!r}:" if fld else ""
        return HarnessError(f"{self.path}: {where}:{field_part} {message}")

    def from_validation(self, err: ValidationError) -> HarnessError:
        """The first error pydantic found, located by table / run and field."""
        first = err.errors()[0]
        loc = list(first["loc"])
        if first["type"] == "extra_forbidden":
            message = "unknown field (not in the suite schema; check its spelling)"
        elif first["type"] == "missing":
            message = "required field is missing"
        else:
            message = first["msg"].removeprefix("Value error, ")
            message += f" (got {first['input']!r})" if repr(first["input"]) not in message else ""
        if not loc:
            return self.error("document", None, message)
        head = loc.pop(0)
        if head == "runs" and loc and isinstance(loc[0], int):
            where = self.run(loc.pop(0))
        elif head == "models" and loc:
            where = f"[models.{loc.pop(0)}]"
        elif head in ("suite", "sampler", "models", "runs", "launch") and loc:
            where = f"[{head}]"
        else:
            return self.error("top level", str(head), message if first["type"] != "extra_forbidden"
                              else "unknown table; a suite has [suite], [sampler], [models.*], [[runs]] and "
                                                                 "[launch]")
        if not loc:
            return self.error(where, None, message)
        fld = str(loc.pop(0))
        raw = self._raw_run_field(head, first["loc"], fld)
        if loc and isinstance(loc[0], int):  # position inside a grid axis: name it only where a list was written
            pos = loc.pop(0)
            if isinstance(raw, list) and not (fld == "interval" and raw and not isinstance(raw[0], list)):
                message += f" [value {pos + 1} of the list]"
                raw = raw[pos] if pos < len(raw) else None
        if loc and not isinstance(raw, (int, float)):  # a bare-number gamma has no sub-fields to name
            fld += "." + ".".join(str(p) for p in loc)
        return self.error(where, fld, message)

    def _raw_run_field(self, head: Any, loc: tuple, fld: str) -> Any:
        if head != "runs":
            return None
        return self.data["runs"][loc[1]].get(fld)


def read_suite_data(path: str | Path) -> dict[str, Any]:
    """The parsed TOML of a suite file, unvalidated; HarnessError when it is missing or not TOML."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: suite file not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise HarnessError(f"{path}: TOML syntax error: {err}") from err
    except UnicodeDecodeError as err:
        raise HarnessError(f"{path}: not a UTF-8 text file ({err})") from err


def load_suite(path: str | Path, root: str | Path | None = None, samples: int | None = None,
               steps: int | None = None, data: dict[str, Any] | None = None) -> Suite:
    """Read, validate and expand a suite TOML file into runs; raises one HarnessError on any mistake.

    Relative paths in the suite (checkpoints, reference) are taken relative to `root`, default the current
    directory (the repository root, where `make` runs). `samples` overrides every run's sample count
    (`harness bench --samples N`), `steps` every run's sampling steps (`--steps N`). `data` is the already
    parsed TOML of `path` (the dry run passes a modified copy); without it the file is read. Nothing is written
    and no weights are read.
    """
    path = Path(path)
    root = Path(root) if root is not None else Path.cwd()
    data = read_suite_data(path) if data is None else data
    if steps is not None:
        if steps < 1:
            raise HarnessError(f"--steps {steps}: must be >= 1")
        data = _with_steps(data, steps)
    where = _Where(path, data)
    try:
        doc = SuiteFile.model_validate(data)
    except ValidationError as err:
        raise where.from_validation(err) from None
    if samples is not None and samples < 1:
        raise HarnessError(f"--samples {samples}: must be >= 1")
    _check_metrics(doc.suite.metrics, where)
    models = {key: _model_spec(key, table, root, where) for key, table in doc.models.items()}
    prompts = _check_prompts(doc, models, root, samples, where)
    try:
        sampler = SamplerSpec(**doc.sampler.model_dump())
    except ValueError as err:
        raise where.error("[sampler]", None, str(err)) from None
    runs: list[Run] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(doc.runs):
        for run in _expand(index, table, doc, models, root, samples, where, prompts):
            if run.run_id in seen:
                raise where.error(where.run(index, run.run_id), "name",
                                  f"run id {run.run_id!r} is also produced by [[runs]] #{seen[run.run_id] + 1}; "
                                  "run ids must be unique")
            seen[run.run_id] = index
            runs.append(run)
    s = doc.suite
    return Suite(path=path, root=root, name=s.name, samples=prompts.samples, batch_size=s.batch_size, seed=s.seed,
                 labels=s.labels, metrics=tuple(s.metrics), reference=_resolve_reference(s.reference, root),
                 sampler=sampler, models=models, runs=tuple(runs), prompts=prompts.spec,
                 images_per_prompt=prompts.per_prompt,
                 launch=doc.launch.model_dump(exclude_none=True) if doc.launch is not None else {})


def _check_metrics(names: list[str], where: _Where) -> None:
    """Stop at the first metric that no module defines, listing every known one (the testbed's included)."""
    from harness import metrics

    metrics._load_plugin("testbed")  # its fd_/precision_/recall_testbed and class_acc belong in the list
    known = sorted(metrics.METRICS)
    for name in names:
        if name not in metrics.METRICS:
            raise where.error("[suite]", "metrics", f"unknown metric {name!r}; known: {', '.join(known)}")


@dataclass(frozen=True)
class _Prompts:
    """A suite's prompt set as its runs store it (None: class labels), images per prompt, the suite's sample count,
    and the sha256 of the prompt texts (None while HPSv3's files are missing)."""

    spec: str | None = None
    per_prompt: int = 1
    samples: int = 0
    digest: str | None = None


def _check_prompts(doc: SuiteFile, models: dict[str, ModelSpec], root: Path, samples: int | None,
                   where: _Where) -> _Prompts:
    """The suite's prompt settings: a text suite's models need a text
    encoder and a class suite's must not have one; a prompt file is read now, so a bad line stops the suite before
    any work. A prompt suite without `samples` takes every prompt's images (0 while HPSv3's prompt files are
    missing: generation stops at the asset check first)."""
    from harness.models.text_encoders import TEXT_ENCODERS
    from harness.prompts import PROMPT_SETS, default_images_per_prompt, load_prompts, resolve_prompts
    from harness.prompts.files import SUFFIXES

    s = doc.suite
    for key, table in doc.models.items():
        if table.text_encoder is not None and table.text_encoder not in TEXT_ENCODERS:
            raise where.error(f"[models.{key}]", "text_encoder", f"unknown text encoder {table.text_encoder!r}; "
                                                                 f"known: {', '.join(sorted(TEXT_ENCODERS))}")
        if s.prompts is None and table.text_encoder is not None:
            raise where.error(f"[models.{key}]", "text_encoder", "only a suite with [suite] prompts conditions on "
                                                                 "text; name a prompt set or remove this field")
    if s.prompts is None:
        if s.images_per_prompt is not None:
            raise where.error("[suite]", "images_per_prompt", "only applies with [suite] prompts")
        if s.samples is None:
            raise where.error("[suite]", "samples", "required field is missing")
        return _Prompts(samples=s.samples)
    if "labels" in where.data["suite"]:
        raise where.error("[suite]", "labels", "a prompt suite's labels are its prompt indices; remove this field")
    used = {r.model for r in doc.runs} | {k for r in doc.runs for k in r.weak_model or []}
    for key in sorted(used & set(models)):
        if doc.models[key].text_encoder is None:
            raise where.error(f"[models.{key}]", "text_encoder", "a prompt suite's models need a text encoder "
                                                                 "(e.g. text_encoder = \"random\" for tests)")
    if s.prompts not in PROMPT_SETS and Path(s.prompts).suffix not in SUFFIXES:
        raise where.error("[suite]", "prompts", f"unknown prompt set {s.prompts!r}: neither a built-in set "
                                                f"({', '.join(PROMPT_SETS)}) nor a prompt file ({' or '.join(SUFFIXES)})")
    prompts = resolve_prompts(s.prompts, root)
    per_prompt = s.images_per_prompt or default_images_per_prompt(s.prompts)
    try:
        prompt_set = load_prompts(prompts, root)
        count, digest = len(prompt_set), prompt_set.digest
    except HarnessError:
        if prompts != "hpsv3":  # a bad user file or a changed GenEval file
            raise
        count = digest = None  # HPSv3's prompt files not fetched yet
    if count is not None:
        wanted = samples or max([s.samples or 0, *(r.samples or 0 for r in doc.runs)])
        if wanted > count * per_prompt:
            raise where.error("[suite]", "samples", f"{wanted} images need {-(-wanted // per_prompt)} prompts at "
                                                    f"{per_prompt} per prompt; prompt set {s.prompts!r} has {count}")
    return _Prompts(prompts, per_prompt, s.samples or (count or 0) * per_prompt, digest)


def _with_steps(data: dict[str, Any], steps: int) -> dict[str, Any]:
    """A copy of suite TOML data with `steps` in [sampler] and in every run's own sampler table."""
    data = copy.deepcopy(data)
    for table in [data.setdefault("sampler", {}), *(r.get("sampler") for r in data.get("runs", [])
                                                      if isinstance(r, dict))]:
        if isinstance(table, dict):
            table["steps"] = steps
    return data


def _resolve_reference(p: str | None, root: Path) -> Path | str | None:
    """A reference batch path, or a built-in reference such as "testbed:10000" kept as it is."""
    from harness.metrics import builtin_reference

    return p if p is not None and builtin_reference(p) else _resolve(p, root)


def _resolve(p: str | None, root: Path) -> Path | None:
    if p is None:
        return None
    path = Path(p).expanduser()
    return path if path.is_absolute() else root / path


def _model_spec(key: str, table: ModelTable, root: Path, where: _Where) -> ModelSpec:
    """The ModelSpec of [models.<key>], its config built (and so checked) by the model's family."""
    where_m = f"[models.{key}]"
    checkpoint = _resolve(table.checkpoint, root)
    spec = ModelSpec(arch=table.arch, checkpoint=str(checkpoint) if checkpoint else None, sparsity=table.sparsity,
                     route=tuple(table.route) if table.route else None, vae=table.vae, overrides=table.overrides(),
                     dropped=table.dropped or DEFAULT_DROPPED, text_encoder=table.text_encoder,
                     text_encoder_options=dict(table.text_encoder_options or {}), weights=table.weights,
                     forward_rows=table.forward_rows or FORWARD_ROWS)
    if table.weights is not None and table.checkpoint is None:
        raise where.error(where_m, "weights", "chooses among a checkpoint's weights, and this model has no checkpoint")
    if table.dropped is not None and table.sparsity != "masking":
        raise where.error(where_m, "dropped", f"only a masking model drops tokens (this model has "
                                              f"{table.sparsity!r})")
    both = sorted(set(table.model_extra or {}) & set(table.options or {}))
    if both:
        raise where.error(where_m, both[0], "set both in the table and in its options")
    try:
        spec.config()  # the family's checks: sparsity, route within the blocks, patch grid, its own fields
    except ConfigError as err:
        raise where.error(where_m, err.field, str(err)) from None
    return spec


def _gamma_json(schedule: Schedule | None) -> float | dict | None:
    """A gamma as written in suites: a number when constant, else {schedule, start, end}."""
    if schedule is None:
        return None
    if schedule.kind == "constant":
        return schedule.start
    return {"schedule": schedule.kind, "start": schedule.start, "end": schedule.end}


def _id_part(axis: str, value: Any) -> str:
    """The run-id text of one grid value: `omega1.5`, `gscos0to0.6`, `int0.2to0.7`, `ch3`, `weakearly`."""
    if isinstance(value, GammaTable):
        s = value.to_schedule()
        text = f"{s.start:g}" if s.kind == "constant" else f"{s.kind[:3]}{s.start:g}to{s.end:g}"
    elif axis == "interval":
        text = f"{value[0]:g}to{value[1]:g}"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return GRID_AXES[axis] + text


def _expand(index: int, table: RunTable, doc: SuiteFile, models: dict[str, ModelSpec], root: Path,
            samples_override: int | None, where: _Where, prompts: _Prompts = _Prompts()) -> list[Run]:
    """The runs of one [[runs]] entry: the product of its list-valued fields, each checked and resolved."""
    raw = where.data["runs"][index]
    name = where.run(index)
    method = table.method
    entry = METHODS[method]
    if table.model not in models:
        raise where.error(name, "model", f"no [models.{table.model}] in the suite (defined: {', '.join(models)})")
    if method in _AG_METHODS and table.weak_model is None:
        raise where.error(name, "weak_model", f"method {method!r} needs a weak_model (a key of [models.*])")
    if method not in _AG_METHODS and table.weak_model is not None:
        raise where.error(name, "weak_model", f"only {' and '.join(_AG_METHODS)} use a weak model, not {method!r}")
    for key in table.weak_model or []:
        if key not in models:
            raise where.error(name, "weak_model", f"no [models.{key}] in the suite (defined: {', '.join(models)})")
    if not entry.branches:
        for fld in ("omega", "gamma_weak", "interval", "cfg_channels", "params"):
            if getattr(table, fld) is not None:
                raise where.error(name, fld, "method 'none' has no weak branch; remove this field")
    elif table.omega is None:
        raise where.error(name, "omega", f"method {method!r} needs a guidance weight omega (1 = no guidance)")
    if entry.sparse and table.gamma_weak is None:
        raise where.error(name, "gamma_weak", f"method {method!r} needs gamma_weak (the weak branch's sparsity)")
    if entry.branches and all(r.dense for r in entry.branches) and table.gamma_weak is not None:
        raise where.error(name, "gamma_weak", f"the guidance branch of method {method!r} drops the route and "
                                              "routes nothing; remove this field")
    if table.params is not None and not entry.params:
        raise where.error(name, "params", f"method {method!r} has no parameters; remove this field")

    axes = {a: getattr(table, a) for a in GRID_AXES if getattr(table, a) is not None}
    grid = [a for a in GRID_AXES if a in axes and isinstance(raw.get(a), list)
            and not (a == "interval" and not isinstance(raw[a][0], list))]
    runs = []
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        run_id = "-".join([table.name] + [_id_part(a, point[a]) for a in grid])
        runs.append(_resolve_run(run_id, index, table, point, doc, models, root, samples_override, where, prompts))
    return runs


def _resolve_run(run_id: str, index: int, table: RunTable, point: dict[str, Any], doc: SuiteFile,
                 models: dict[str, ModelSpec], root: Path, samples_override: int | None, where: _Where,
                 prompts: _Prompts = _Prompts()) -> Run:
    """One grid point of a run: cross-field checks, GuidanceSpec, resolved config and its hash."""
    name = where.run(index, run_id)
    method = table.method
    keys = {"main": table.model}
    entry = METHODS[method]
    if entry.uses_weak_model:
        keys["weak"] = point["weak_model"]
    gamma_strong = point["gamma_strong"].to_schedule() if "gamma_strong" in point else Schedule.constant(0.0)
    gamma_weak = point["gamma_weak"].to_schedule() if "gamma_weak" in point else None
    if entry.branches and gamma_weak is None:
        gamma_weak = gamma_strong  # cfg / ag / icg: the weak branch runs at the strong branch's sparsity
    # ag+sg may run its weak model at a lower gamma: the early checkpoint makes it weak (SG paper, Fig. 6)
    if entry.sparse and not entry.uses_weak_model \
            and gamma_strong.kind == gamma_weak.kind == "constant" and gamma_strong.start >= gamma_weak.start:
        raise where.error(name, "gamma_strong", f"method {method!r} needs gamma_strong < gamma_weak (the weak "
                                                f"branch is the sparser one), got {gamma_strong.start:g} >= "
                                                f"{gamma_weak.start:g}")
    branch_models = {"gamma_strong": "main"}
    if entry.branches and not all(r.dense for r in entry.branches):
        branch_models["gamma_weak"] = entry.branches[0].model
    for fld, role in branch_models.items():
        schedule = gamma_strong if fld == "gamma_strong" else gamma_weak
        spec = models[keys[role]]
        if max(schedule.start, schedule.end) > 0 and spec.sparsity == "none":
            raise where.error(name, fld, f"model {keys[role]!r} has sparsity 'none': it cannot drop tokens, so "
                                         f"its gamma must be 0 (got {schedule.label()})")
    if "weak" in keys:
        main_cfg, _ = models[keys["main"]].config()
        weak_cfg, _ = models[keys["weak"]].config()
        for attr in _SAME_SPACE:
            if getattr(main_cfg, attr, None) != getattr(weak_cfg, attr, None):
                raise where.error(name, "weak_model", f"models {keys['main']!r} and {keys['weak']!r} differ in "
                                                      f"{attr} ({getattr(main_cfg, attr)} vs "
                                                      f"{getattr(weak_cfg, attr)}); AG needs the same data space")
    model_tables = {k: doc.models[k] for k in dict.fromkeys(keys.values())}
    channels = point.get("cfg_channels", doc.models[table.model].cfg_channels or "all")
    interval = tuple(point["interval"]) if "interval" in point else None
    params = _method_params(entry, table, keys, models, gamma_weak, name, where)
    guidance = GuidanceSpec(method=method, omega=point.get("omega", 1.0), gamma_strong=gamma_strong,
                            gamma_weak=gamma_weak if entry.branches else None, interval=interval,
                            cfg_channels=None if channels == "all" else int(channels),
                            omega_power=table.omega_power_cosine, params=tuple(sorted(params.items())))
    samples = samples_override or table.samples or prompts.samples
    sampler = {**doc.sampler.model_dump(), **(table.sampler.model_dump(exclude_none=True) if table.sampler else {})}
    if sampler["kind"] != "edm_heun":  # its schedule does not apply: leave it out of the config (and its hash)
        sampler = {k: v for k, v in sampler.items() if k not in _EDM_SAMPLER_FIELDS}
    try:
        sampler_spec = SamplerSpec(**sampler)
    except ValueError as err:
        raise where.error(name, "sampler", str(err)) from None
    s = doc.suite
    seed = point.get("seed", s.seed)
    precision = table.precision or s.precision
    compiled = s.compile if table.compile is None else table.compile
    config = {
        "suite": {"name": s.name, "seed": seed, "labels": s.labels, "batch_size": s.batch_size,
                  "metrics": list(s.metrics), "reference": s.reference},
        "sampler": sampler,
        "models": {k: {"arch": t.arch, "checkpoint": t.checkpoint, "sparsity": t.sparsity, "route": t.route,
                       "vae": t.vae, "overrides": t.overrides(),
                       **({"dropped": models[k].dropped} if t.sparsity == "masking" else {}),
                       **({"weights": t.weights} if t.weights else {}),  # set only: earlier hashes stay
                       **({"forward_rows": t.forward_rows} if t.forward_rows not in (None, FORWARD_ROWS) else {})}
                   for k, t in model_tables.items()},
        "run": {"id": run_id, "name": table.name, "method": method, "model": keys["main"],
                "weak_model": keys.get("weak"), "omega": guidance.omega, "gamma_strong": _gamma_json(gamma_strong),
                "gamma_weak": _gamma_json(guidance.gamma_weak), "interval": list(interval) if interval else None,
                "cfg_channels": channels if entry.branches else None, "samples": samples,
                "paper": list(table.paper or []), "precision": precision, "compile": compiled},
    }
    if params:  # methods with parameters only, so earlier runs keep their config hashes
        config["run"]["params"] = {k: _param_json(v) for k, v in params.items()}
    if table.omega_power_cosine is not None:  # set only, so earlier runs keep their config hashes
        config["run"]["omega_power_cosine"] = table.omega_power_cosine
    if prompts.spec is not None:  # only text suites carry these, so class suites keep their config hashes
        # the prompt texts' sha256: an edited prompt file changes the samples, so it changes the hash
        config["suite"].update(prompts=prompts.spec, images_per_prompt=prompts.per_prompt,
                               prompts_sha256=prompts.digest)
        for key, t in model_tables.items():
            config["models"][key].update(text_encoder=t.text_encoder, text_encoder_options=t.text_encoder_options)
    return Run(suite=s.name, run_id=run_id, name=table.name, method=method,
               models={role: models[k] for role, k in keys.items()}, model_keys=keys, guidance=guidance,
               sampler=sampler_spec, samples=samples, batch_size=s.batch_size,
               seed=seed, labels=s.labels, metrics=tuple(s.metrics), reference=_resolve_reference(s.reference, root),
               paper=tuple(table.paper or []), config=config, config_hash=config_hash(config),
               prompts=prompts.spec, images_per_prompt=prompts.per_prompt, precision=precision, compile=compiled)


def _param_json(value: Any) -> Any:
    """A method parameter as the config stores it: block lists as lists, SEG's infinite sigma as "inf" (strict JSON
    has no infinity)."""
    if isinstance(value, tuple):
        return list(value)
    return "inf" if isinstance(value, float) and math.isinf(value) else value


def _method_params(entry: Method, table: RunTable, keys: dict[str, str], models: dict[str, ModelSpec],
                   gamma_weak: Schedule | None, name: str, where: _Where) -> dict[str, Any]:
    """The run's method parameters, checked and with defaults filled in, after checking that each perturbed branch's
    model implements its perturbation (the `method` field) and that its blocks exist (`params.layers`)."""
    config = models[keys["main"]].config()[0]
    depth = getattr(config, "depth", None)
    for role in entry.branches:
        if role.perturb is None:
            continue
        spec = models[keys[role.model]]
        network = family_of(spec.config()[0]).network
        if role.perturb not in getattr(network, "PERTURBATIONS", ()):
            able = [f for f, fam in FAMILIES.items() if role.perturb in getattr(fam.network, "PERTURBATIONS", ())]
            raise where.error(name, "method", f"method {table.method!r} needs the {role.perturb!r} perturbation, "
                                              f"which model {keys[role.model]!r} ({spec.arch}, family "
                                              f"{network.__name__}) does not implement; families that do: "
                                              f"{', '.join(able)}")
        if role.perturb == "drop_route" and spec.sparsity == "none":
            raise where.error(name, "method", f"method {table.method!r} drops the route, and model "
                                              f"{keys[role.model]!r} has sparsity 'none' (no route to drop)")
    try:
        params = entry.resolve(dict(table.params or {}), depth)
    except KeyError as err:
        raise where.error(name, "params", err.args[0]) from None
    except ValueError as err:
        fld, _, message = str(err).partition(": ")
        raise where.error(name, f"params.{fld}", message) from None
    layers = params.get("layers")
    if layers is not None and depth is not None:
        if max(layers) >= depth:
            raise where.error(name, "params.layers", f"block {max(layers)} lies outside blocks 0..{depth - 1} of "
                                                     f"model {keys['main']!r}")
        sparse_weak = gamma_weak is not None and max(gamma_weak.start, gamma_weak.end) > 0
        if "blur_queries" in entry.perturbations and sparse_weak and (
                config.sparsity == "masking" or (config.route and any(config.route[0] <= i <= config.route[1]
                                                                      for i in layers))):
            raise where.error(name, "params.layers", "SEG blurs queries over the full token grid, but at gamma_weak "
                                                     f"{gamma_weak.label()} blocks {list(layers)} see only the kept "
                                                     "tokens; use gamma_weak 0 or blocks outside the route")
    return params
