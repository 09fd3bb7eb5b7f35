"""Weights & Biases logging for FSCIL benchmark runs (an Avalanche logger that works on wandb 0.31).

Avalanche 0.6.0's own ``WandBLogger`` crashes on current wandb (``wandb.util.generate_id``
and ``wandb.viz`` are gone, hazards H3/H4 in ``shared/docs/avalanche-notes.md``) and
opens its run at construction. :class:`WandbRunLogger` replaces it:

* one W&B run per (stream, strategy, seed), created lazily (first logged value or
  :meth:`WandbRunLogger.start`), never at import or construction;
* metrics are keyed by the **session index** (Avalanche's ``x_plot``): the run defines a
  custom step metric ``session`` (``define_metric("session")`` and
  ``define_metric("*", step_metric="session")``) and every row is logged as
  ``run.log({..., "session": s})``, never with wandb's global ``step=``. The values of one
  session are buffered and written as one row when the session changes, at
  ``after_eval`` and at :meth:`WandbRunLogger.finish`;
* ``mode="off"`` never imports or calls wandb (every wandb import here is inside a method;
  note that ``import avalanche`` itself imports wandb, from
  ``avalanche/evaluation/metrics/confusion_matrix.py``); ``"offline"`` writes ``<dir>/wandb/offline-run-*/``
  (sync later with ``wandb sync``) and needs no network or account; ``"online"`` syncs live;
* a run id (``secrets.token_hex``) is generated when not given; ``run_id=<id>,
  resume=True`` reopens the same run on the server (wandb ``resume="allow"``, online).
  Offline, a killed run's file may hold nothing (wandb flushes every ~15 s) and a second
  folder with the same id does not append on ``wandb sync``: the benchmark runner instead
  sets the killed folder aside (:func:`set_aside_offline_runs`) and re-logs the
  checkpointed sessions into a clean run with the same id (:meth:`WandbRunLogger.log_session`).

All accuracies the FSCIL metrics emit are fractions in ``[0, 1]`` and are logged as they
come (no conversion to %).

Example::

    logger = WandbRunLogger(mode="offline", group="cifar100_fscil", name="cifar100/naive/seed0",
                            config={"lr": 0.1, "seed": 0}, dir="runs")
    evaluator = EvaluationPlugin(*fscil_metrics(), loggers=[logger])
    ...  # train / eval every session
    logger.log_summary({"AA": table.aa, "PD": table.pd})
    logger.log_image("session_plot", "runs/plot.png")
    logger.finish()

:func:`read_offline_run` decodes an offline run's ``run-<id>.wandb`` file (config, history
rows, summary) for tests and debugging.
"""

from __future__ import annotations

import math
import numbers
import os
import secrets
import struct
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from avalanche.logging import BaseLogger

if TYPE_CHECKING:
    from avalanche.evaluation.metric_results import MetricValue
    from avalanche.training.templates import SupervisedTemplate

__all__ = [
    "WandbRunLogger",
    "MODES",
    "STEP_METRIC",
    "read_offline_run",
    "iter_offline_records",
    "set_aside_offline_runs",
]

#: Allowed values of ``WandbRunLogger(mode=...)``.
MODES: tuple[str, ...] = ("off", "offline", "online")
#: Name of the custom x axis every metric is plotted against (the session index).
STEP_METRIC = "session"
# ``WANDB_MODE`` values that make a requested "online" run stay local (a kill switch for CI).
_LOCAL_ENV_MODES = ("offline", "disabled", "dryrun")


def _is_table(value: Any) -> bool:
    """Duck-typed :class:`~avalanche_fscl.plugins.fscil_metrics.FSCILTable`."""
    return callable(getattr(value, "to_dict", None)) and callable(getattr(value, "to_markdown", None))


def _scalar(value: Any) -> float | int | None:
    """A python number for a loggable scalar (number, 0-d/1-element tensor or array), else ``None``.

    NaN and infinite values give ``None`` (they are skipped).
    """
    if isinstance(value, bool):
        value = int(value)
    elif isinstance(value, numbers.Number):
        if not isinstance(value, numbers.Real):
            return None  # complex
        value = value.item() if hasattr(value, "item") else value  # numpy scalars
    elif hasattr(value, "numel") and hasattr(value, "item"):  # torch tensor
        if value.numel() != 1:
            return None
        value = value.detach().cpu().item()
    elif hasattr(value, "size") and hasattr(value, "item") and hasattr(value, "dtype"):  # numpy
        if value.size != 1:
            return None
        value = value.item()
    else:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def _cell(value: Any) -> Any:
    """A table cell: python numbers for scalars, ``None`` for NaN/inf, other values as given."""
    if value is None or isinstance(value, str):
        return value
    number = _scalar(value)
    if number is not None:
        return number
    if isinstance(value, numbers.Number) or (hasattr(value, "numel") and value.numel() == 1):
        return None  # non-finite
    return value


class WandbRunLogger(BaseLogger):
    """One W&B run of a benchmark (stream, strategy, seed), usable as an Avalanche logger.

    Pass it to ``EvaluationPlugin(..., loggers=[logger])``: scalar metric values are logged
    against the session index (``x_plot``), see the module docstring. The benchmark runner
    also calls :meth:`log_results_table`, :meth:`log_image`, :meth:`log_summary` and
    :meth:`finish` directly.

    Args:
        mode: ``"off"`` (log nothing, never import or call wandb), ``"offline"`` (write the run
            under ``dir``; no network) or ``"online"``. An ``"online"`` logger stays local
            when the environment sets ``WANDB_MODE`` to ``offline``/``disabled``/``dryrun``.
        project: W&B project.
        group: W&B group (the suite name).
        name: run display name, e.g. ``"<stream>/<strategy>/seed<k>"``.
        config: hyper-parameters stored in the run's config (JSON-able values).
        dir: folder under which wandb writes ``wandb/`` (created if missing); default: the
            working directory (wandb's default).
        tags: W&B tags.
        run_id: W&B run id; a new random id (``secrets.token_hex(8)``) when ``None``.
        resume: reopen the run ``run_id`` (wandb ``resume="allow"``: created if it does
            not exist). Meant for online runs; see the module docstring for offline ones.
        entity: W&B entity (user or team); ``None``: the account's default.
        metric_prefixes: only metric names starting with one of these are logged
            (``None``: every metric). Avalanche's built-in metrics use the training
            iteration, not the session, as ``x_plot``; ``("FSCIL/",)`` keeps them out.
        settings: extra ``wandb.Settings`` fields, overriding the quiet defaults.

    Raises:
        ValueError: ``mode`` is not one of :data:`MODES`.
    """

    def __init__(
        self,
        *,
        mode: str = "offline",
        project: str = "avalanche-fscl",
        group: str | None = None,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        dir: str | os.PathLike | None = None,
        tags: Sequence[str] = (),
        run_id: str | None = None,
        resume: bool = False,
        entity: str | None = None,
        metric_prefixes: Sequence[str] | None = None,
        settings: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got mode={mode!r}")
        if isinstance(tags, str):
            raise TypeError("tags must be a sequence of strings, not a single string")
        self.mode = mode
        self.project = project
        self.group = group
        self.name = name
        self.config: dict[str, Any] = dict(config or {})
        self.dir: Path | None = None if dir is None else Path(dir)
        self.tags: tuple[str, ...] = tuple(tags or ())
        self.entity = entity
        self.run_id: str = run_id if run_id is not None else secrets.token_hex(8)
        self.resume = bool(resume)
        self.metric_prefixes: tuple[str, ...] | None = (
            None if metric_prefixes is None else tuple(metric_prefixes)
        )
        self.settings: dict[str, Any] = dict(settings or {})
        #: latest FSCIL table received as a metric value (``None`` until one arrives).
        self.latest_table: Any = None
        self._table_name: str | None = None
        self._run: Any = None
        self._finished = False
        self._warned_closed = False
        self._pending: dict[str, Any] = {}
        self._pending_x: int | None = None
        #: the run's ``run-<id>.wandb`` file and folder once started (``None`` when off).
        self.sync_file: Path | None = None
        self.run_dir: Path | None = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def enabled(self) -> bool:
        """``False`` for ``mode="off"``."""
        return self.mode != "off"

    @property
    def run(self) -> Any:
        """The live ``wandb.Run`` (``None`` when off, not started yet or finished)."""
        return self._run

    @property
    def finished(self) -> bool:
        """``True`` after :meth:`finish`; later logging calls are ignored."""
        return self._finished

    def _effective_mode(self) -> str:
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if self.mode == "online" and env in _LOCAL_ENV_MODES:
            return "disabled" if env == "disabled" else "offline"
        return self.mode

    def _settings(self, wandb: Any) -> Any:
        fields: dict[str, Any] = {
            "silent": True,
            "console": "off",
            "x_disable_stats": True,  # no system-metrics sampler process
            "x_disable_meta": True,
            "x_disable_machine_info": True,
            "disable_git": True,
            "disable_code": True,
            "save_code": False,
            "x_save_requirements": False,
        }
        fields.update(self.settings)
        return wandb.Settings(**fields)

    def start(self) -> Any:
        """Open the W&B run now (idempotent) and return it; ``None`` when off or finished."""
        if self.mode == "off" or self._finished:
            return None
        if self._run is not None:
            return self._run
        import wandb

        kwargs: dict[str, Any] = dict(
            project=self.project,
            entity=self.entity,
            group=self.group,
            name=self.name,
            config=self.config,
            tags=list(self.tags) or None,
            id=self.run_id,
            mode=self._effective_mode(),
            reinit="create_new",  # several loggers may coexist; never touch wandb.run
            settings=self._settings(wandb),
        )
        if self.resume:
            kwargs["resume"] = "allow"
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            kwargs["dir"] = str(self.dir)
        run = wandb.init(**kwargs)
        run.define_metric(STEP_METRIC)
        run.define_metric("*", step_metric=STEP_METRIC)
        self._run = run
        # a disabled run (WANDB_MODE=disabled kill switch) writes nothing
        sync_file = None if kwargs["mode"] == "disabled" else getattr(run.settings, "sync_file", None)
        self.sync_file = Path(sync_file) if sync_file else None
        self.run_dir = self.sync_file.parent if self.sync_file else None
        return run

    def _live_run(self) -> Any:
        """The run to log to (started lazily), or ``None`` when off / finished."""
        if self.mode == "off":
            return None
        if self._finished:
            if not self._warned_closed:
                warnings.warn(
                    f"WandbRunLogger {self.run_id}: logging after finish() is ignored",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._warned_closed = True
            return None
        return self.start()

    def finish(self, exit_code: int | None = None, *, wait_s: float = 30.0) -> None:
        """Flush buffered values, log the latest FSCIL table and finish the run (idempotent).

        The latest :class:`FSCILTable` metric value, if any, is logged once as a
        ``wandb.Table`` (one row per session, accuracies as fractions) under its metric
        name (e.g. ``"FSCIL/table"``).

        Offline, wandb 0.31's ``run.finish()`` returns before its service process has
        written the run file (it may still hold only its 7-byte header), so this then waits
        up to ``wait_s`` seconds for the file's exit record (:meth:`wait_for_sync_file`);
        ``wait_s=0`` skips the wait. The data is safe either way: the service flushes it
        at process exit.
        """
        if self.mode == "off" or self._finished:
            self._finished = True
            return
        try:
            if self._run is not None or self._pending or self.latest_table is not None:
                self.flush()
                self._log_latest_table()
        finally:
            run, self._run = self._run, None
            self._finished = True
            if run is not None:
                run.finish(exit_code=exit_code)
                if wait_s > 0 and self._effective_mode() == "offline":
                    self.wait_for_sync_file(wait_s)

    def wait_for_sync_file(self, timeout_s: float = 30.0) -> bool:
        """Wait until the run file holds the exit record written at finish (offline runs).

        Returns ``True`` once it does; ``False`` (with a warning) after ``timeout_s``
        seconds, or at once when there is no run file (off, not started, disabled).
        """
        path = self.sync_file
        if path is None:
            return False
        deadline = time.monotonic() + timeout_s
        delay = 0.01
        while True:
            if _has_exit_record(path):
                return True
            if time.monotonic() >= deadline:
                warnings.warn(
                    f"wandb run file {path} has no exit record after {timeout_s:.0f} s",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def close(self) -> None:
        """Same as :meth:`finish`."""
        self.finish()

    def __enter__(self) -> "WandbRunLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=None if exc_type is None else 1)

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-able settings needed to reopen this run (see :meth:`from_state_dict`)."""
        return {
            "run_id": self.run_id,
            "project": self.project,
            "entity": self.entity,
            "group": self.group,
            "name": self.name,
            "mode": self.mode,
            "dir": None if self.dir is None else str(self.dir),
            "tags": list(self.tags),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], **overrides: Any) -> "WandbRunLogger":
        """A logger that resumes the run of :meth:`state_dict` (``resume=True``).

        ``overrides`` replace constructor arguments (e.g. ``config=...``, ``mode="off"``).
        """
        kwargs: dict[str, Any] = {
            "mode": state.get("mode", "offline"),
            "project": state.get("project", "avalanche-fscl"),
            "entity": state.get("entity"),
            "group": state.get("group"),
            "name": state.get("name"),
            "dir": state.get("dir"),
            "tags": tuple(state.get("tags", ())),
            "run_id": state["run_id"],
            "resume": True,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # The live run cannot be pickled (Avalanche's save_checkpoint pickles the whole
        # strategy, loggers included): drop it; the copy reopens the same id lazily.
        state = self.__dict__.copy()
        if state.get("_run") is not None:
            state["_run"] = None
            state["resume"] = True
        return state

    # ----------------------------------------------------------------- metrics
    def log_single_metric(self, name: str, value: Any, x_plot: int) -> None:
        """Log one Avalanche metric value at session ``x_plot``.

        Numbers, 0-d (or 1-element) tensors and numpy scalars are buffered into the row of
        session ``x_plot``; the pending row is written when a value of another session
        arrives, at ``after_eval`` and at :meth:`finish`. NaN/inf values are skipped.
        :class:`FSCILTable` values (anything with ``to_dict`` and ``to_markdown``) become
        :attr:`latest_table`. Other types (images, figures, multi-element tensors) are
        ignored.
        """
        if self.mode == "off" or self._finished:
            return
        if self.metric_prefixes is not None and not name.startswith(self.metric_prefixes):
            return
        best = getattr(value, "best_supported_value", None)  # Avalanche AlternativeValues
        if callable(best):
            value = best(float, int)
            if value is None:
                return
        if _is_table(value):
            self.latest_table = value
            self._table_name = name
            return
        number = _scalar(value)
        if number is None:
            return
        self._buffer(int(x_plot), {name: number})

    def _buffer(self, session: int, values: Mapping[str, Any]) -> None:
        if self._live_run() is None:  # starts the run on the first value
            return
        if self._pending_x is not None and session != self._pending_x:
            self.flush()
        self._pending_x = session
        self._pending.update(values)

    def flush(self) -> None:
        """Write the buffered row of the current session (``{..., "session": s}``), if any."""
        if not self._pending:
            self._pending_x = None
            return
        row, self._pending = self._pending, {}
        session, self._pending_x = self._pending_x, None
        run = self._live_run()
        if run is None:
            return
        row[STEP_METRIC] = session
        run.log(row)

    def after_eval(
        self, strategy: "SupervisedTemplate", metric_values: list["MetricValue"], **kwargs: Any
    ) -> None:
        """Avalanche callback (called by ``EvaluationPlugin``): flush the session's row."""
        self.flush()

    # ---------------------------------------------------------- runner helpers
    def log_session(self, session: int, values: Mapping[str, Any]) -> None:
        """Log one session's row: ``values`` (numbers; NaN/inf skipped) at step ``session``.

        The benchmark runner logs every session through this, live and when it re-logs the
        checkpointed sessions of a resumed run, so both write identical rows.
        """
        if self.mode == "off" or self._finished:
            return
        row = {k: n for k, n in ((k, _scalar(v)) for k, v in values.items()) if n is not None}
        self._buffer(int(session), row)
        self.flush()

    def log_results_table(
        self, columns: Sequence[str], rows: Sequence[Sequence[Any]], key: str = "results_table"
    ) -> None:
        """Log a ``wandb.Table`` (e.g. one row per session / method) under ``key``.

        NaN/inf cells (e.g. the novel accuracy of session 0) become empty (``None``) cells;
        0-d tensors and numpy scalars become python numbers.
        """
        if self.mode == "off":
            return
        self.flush()
        run = self._live_run()
        if run is None:
            return
        import wandb

        table = wandb.Table(columns=list(columns), data=[[_cell(v) for v in r] for r in rows])
        run.log({key: table})

    def log_image(self, key: str, path: str | os.PathLike, *, session: int | None = None) -> None:
        """Log the image file ``path`` (e.g. the per-session plot png) as ``wandb.Image``.

        With ``session``, the image joins that session's row; otherwise it is its own row.

        Raises:
            FileNotFoundError: ``path`` does not exist (also when off, to catch runner bugs).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        if self.mode == "off":
            return
        run = self._live_run()
        if run is None:
            return
        import wandb

        image = wandb.Image(str(path))
        if session is None:
            self.flush()
            run.log({key: image})
        else:
            self._buffer(int(session), {key: image})

    def log_summary(self, values: Mapping[str, Any]) -> None:
        """Set ``run.summary[k] = v`` for each item (e.g. final ``AA``, ``PD`` as fractions).

        Tensors/numpy scalars become python numbers; NaN values are skipped.
        """
        if self.mode == "off":
            return
        run = self._live_run()
        if run is None:
            return
        for k, v in values.items():
            number = _scalar(v)
            if number is not None:
                run.summary[k] = number
            elif not isinstance(v, (numbers.Number,)) and not hasattr(v, "numel"):
                run.summary[k] = v  # strings, lists, dicts: as given
            # non-finite numbers and multi-element tensors are skipped

    def log_config(self, values: Mapping[str, Any]) -> None:
        """Add entries to the run's config (also recorded in :attr:`config`)."""
        self.config.update(values)
        if self.mode == "off":
            return
        run = self._live_run()
        if run is not None:
            run.config.update(dict(values), allow_val_change=True)

    def _log_latest_table(self) -> None:
        table = self.latest_table
        if table is None:
            return
        run = self._live_run()
        if run is None:
            return
        import wandb

        d = table.to_dict()
        columns = ["session", "acc", "base", "novel", "hm", "n_samples"]
        data = [[_cell(r.get(c)) for c in columns] for r in d.get("sessions", [])]
        run.log({self._table_name or "table": wandb.Table(columns=columns, data=data)})
        self.latest_table = None

    def __repr__(self) -> str:
        return (
            f"WandbRunLogger(mode={self.mode!r}, project={self.project!r}, group={self.group!r}, "
            f"name={self.name!r}, run_id={self.run_id!r}, resume={self.resume})"
        )


# --------------------------------------------------------------------------- reading back
# An offline run file (``run-<id>.wandb``) is a LevelDB-style log: a 7-byte file header
# (b":W&B", magic 0xBEE1 little-endian, version 0), then 32 KiB blocks of chunks, each with
# a 7-byte header (CRC32 uint32, length uint16, type uint8: 1 full, 2 first, 3 middle,
# 4 last) holding a serialized ``wandb.proto.wandb_internal_pb2.Record``. wandb 0.31 no
# longer ships a Python reader (the old ``wandb.sdk.internal.datastore`` is gone; the Go
# ``wandb-core`` reads it), hence this small one.
_HEADER = struct.Struct("<4sHB")
_CHUNK = struct.Struct("<IHB")
_BLOCK = 32768


def iter_offline_records(path: str | os.PathLike) -> Iterator[Any]:
    """Yield the ``wandb_internal_pb2.Record`` messages of a ``run-<id>.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"not a wandb run file: {path}")
    pos, buf = _HEADER.size, b""
    while pos + _CHUNK.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = _CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding / preallocated tail
            pos += left
            continue
        if pos + _CHUNK.size + length > len(data):
            break  # truncated tail: the file is still being written
        chunk = data[pos + _CHUNK.size : pos + _CHUNK.size + length]
        pos += _CHUNK.size + length
        if kind in (1, 2):
            buf = chunk
        else:
            buf += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def set_aside_offline_runs(wandb_dir: str | os.PathLike, run_id: str, dest: str | os.PathLike) -> list[Path]:
    """Move every offline run folder of ``run_id`` out of ``wandb_dir`` into ``dest``.

    A run killed mid-way leaves ``wandb/offline-run-*-<id>/`` with a file wandb may not have
    flushed (often only its header): ``wandb sync`` of the output folder then uploads
    nothing, for any run. The runner sets such folders aside before it re-logs the run
    from its checkpoint, so ``wandb/`` only ever holds complete runs. The ``.wandb`` files
    are renamed ``*.wandb.killed`` so no wandb tool picks them up. Returns the new paths.
    """
    wandb_dir, dest = Path(wandb_dir), Path(dest)
    moved = []
    for folder in sorted(wandb_dir.glob(f"offline-run-*-{run_id}")):
        target = dest / folder.name
        n = 1
        while target.exists():
            target, n = dest / f"{folder.name}.{n}", n + 1
        dest.mkdir(parents=True, exist_ok=True)
        folder.rename(target)
        for f in target.glob("*.wandb"):
            f.rename(f.with_name(f.name + ".killed"))
        moved.append(target)
    latest = wandb_dir / "latest-run"
    if moved and latest.is_symlink() and not latest.exists():
        latest.unlink()
    return moved


def _has_exit_record(path: Path) -> bool:
    try:
        return any(r.WhichOneof("record_type") == "exit" for r in iter_offline_records(path))
    except Exception:  # missing, half-written or unparsable (yet): not done
        return False


def _update_items(target: dict[str, Any], items: Any) -> None:
    """Apply ``key``/``nested_key`` + ``value_json`` items to ``target``.

    wandb flattens media values (tables, images) into one item per field with a
    ``nested_key`` path (e.g. ``["results_table", "_type"]``); they are nested back here.
    A metric name with "/" is a single path element and stays a flat key.
    """
    import json

    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = target
        for k in path[:-1]:
            child = node.get(k)
            if not isinstance(child, dict):
                child = node[k] = {}
            node = child
        node[path[-1]] = json.loads(item.value_json)


def read_offline_run(path: str | os.PathLike) -> dict[str, Any]:
    """Decode an offline run: ``path`` is its ``run-<id>.wandb`` file or its folder.

    Returns ``{"run_id", "project", "group", "name", "tags", "config": {k: v},
    "history": [row dict, ...], "summary": {k: v}, "metrics": [defined metric names]}``;
    values are JSON-decoded (wandb media such as tables/images appear as their JSON
    reference dicts, e.g. ``{"_type": "table-file", ...}``).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if not files:
            raise FileNotFoundError(f"no run-*.wandb file in {path}")
        path = files[0]
    out: dict[str, Any] = {
        "run_id": None, "project": None, "group": None, "name": None, "tags": [],
        "config": {}, "history": [], "summary": {}, "metrics": [],
    }
    for rec in iter_offline_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.update(run_id=r.run_id, project=r.project, group=r.run_group,
                       name=r.display_name, tags=list(r.tags))
            _update_items(out["config"], r.config.update)
        elif kind == "config":
            _update_items(out["config"], rec.config.update)
        elif kind == "history":
            row: dict[str, Any] = {}
            _update_items(row, rec.history.item)
            out["history"].append(row)
        elif kind == "summary":
            _update_items(out["summary"], rec.summary.update)
        elif kind == "metric":
            out["metrics"].append(rec.metric.name or rec.metric.glob_name)
    return out
