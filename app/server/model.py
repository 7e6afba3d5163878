"""One loaded model version, and the two ways of scoring a request with it.

The *reference path* is MLflow's own scoring code (`mlflow.pyfunc.scoring_server.invocations`)
run on the pyfunc model: whatever `mlflow models serve` answers, including every error
message and status code, this answers too.

The *fast path* skips pandas and pyfunc's schema enforcement for the requests where the
outcome is known in advance: a scikit-learn model whose signature is only `double`/`long`
columns, a JSON body with exactly one format key, no `params`, the signature's columns
exactly, and plain numbers of the right kind. Those rows are stacked into one numpy array
per micro-batch and handed to the estimator's own prediction method, the one pyfunc would
call, or, for plain linear models, to a kernel that computes the same thing without
scikit-learn's per-call checks and was shown to agree with it at load (kernels.py).
Anything else (a bool, a null, an extra key, an odd content type) is not judged
here: it takes the reference path, so error answers are MLflow's by construction.
The conformance tests compare both paths against `mlflow models serve`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app import contract
from app.server import kernels

log = logging.getLogger("app.server.model")

CONTENT_TYPE_JSON = "application/json"
_FORMAT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
# MLflow column types the fast path reproduces exactly: what numpy builds from JSON
# numbers is what pyfunc's enforcement converts them to.
_FAST_TYPES = {"double": np.float64, "long": np.int64}
# The JSON value types accepted per column type (bool, None, str, lists excluded).
_ALLOWED = {np.float64: frozenset((int, float)), np.int64: frozenset((int,))}
_SPLIT_KEYS = frozenset(("columns", "data"))

# Deepest nesting of arrays and objects (the outer object counts) a JSON request may have.
# MLflow parses with Python's recursive decoder, which runs out of stack near 1,000 levels
# and then escapes MLflow's error handling as a bare 500. A tensor has at most 64 dimensions
# (numpy's limit, so MLflow refuses deeper inputs with a 400 anyway): 128 leaves room for
# every request MLflow can score, and is far enough below the decoder's limit that no thread
# depth reaches it.
MAX_JSON_DEPTH = 128
# JSON strings, escapes included, so that brackets inside them are not counted.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class NotFast(Exception):
    """The request is not one the fast path can judge; take the reference path."""


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"


def error_body(code: str, message: str) -> bytes:
    """An error in MLflow's shape (`{"error_code": ..., "message": ...}`)."""
    return orjson.dumps({"error_code": code, "message": message})


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (brackets in strings do not count).

    Linear and in C (regex, translate, numpy): it must not recurse itself, and it runs on
    bodies of up to the body limit. For text that is not valid JSON the figure is only an
    estimate, which is all the depth check needs."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def _parsed_as_json_by_mlflow(content_type: str | None) -> bool:
    """Whether MLflow's scoring function would parse this body as JSON (its own reading of
    the content type: media type exactly application/json, no parameter but charset=utf-8)."""
    if content_type is None:
        return False
    mime, *params = (p.strip() for p in content_type.split(";"))
    values = {k: v for k, _, v in (p.partition("=") for p in params)}
    return mime == CONTENT_TYPE_JSON and values.get("charset", "utf-8").lower() == "utf-8" and values.keys() <= {"charset"}


@dataclass
class FastSpec:
    columns: tuple[str, ...]
    index: dict[str, int]
    dtype: Any  # np.float64 or np.int64, one for all columns
    predict: Callable[[Any], Any]
    frame_columns: list[str] | None  # the estimator was fitted on a DataFrame: give it one
    column_list: list[str] = field(default_factory=list)  # `columns` as a list, compared with requests'
    # The estimator's prediction as a checked numpy formula (kernels.py), when it has one.
    kernel: kernels.Kernel | None = None
    kernel_name: str | None = None


@dataclass
class LoadedModel:
    name: str
    version: str
    alias: str
    uri: str
    device: str
    flavor: str
    pyfunc: Any
    input_schema: Any
    fast: FastSpec | None
    local_dir: str | None = None
    loaded_at: float = field(default_factory=time.time)

    # ---- reference path -------------------------------------------------------------
    def score_reference(self, body: bytes, content_type: str | None) -> Answer:
        """MLflow's scoring function on this model, as `mlflow models serve` runs it, except
        where MLflow's server would answer a bare 500: JSON nested past MAX_JSON_DEPTH is a
        400, and an exception MLflow lets escape is logged and answered as a JSON 500."""
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc import scoring_server

        if (body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _parsed_as_json_by_mlflow(content_type)
                and json_depth(body) > MAX_JSON_DEPTH):
            return Answer(400, error_body("BAD_REQUEST", f"request JSON is nested deeper than {MAX_JSON_DEPTH} "
                                                         "levels of arrays and objects"))
        try:
            res = scoring_server.invocations(body, content_type, self.pyfunc, self.input_schema)  # type: ignore[no-untyped-call]
        except MlflowException as e:
            return Answer(e.get_http_status_code(), e.serialize_as_json().encode())  # type: ignore[no-untyped-call]
        except Exception as exc:  # noqa: BLE001 - MLflow's server lets these escape as a bare 500
            log.exception("MLflow's scoring function failed", extra={"model_version": self.version})
            return Answer(500, error_body("INTERNAL_ERROR", f"scoring failed: {exc!r}"))
        return Answer(res.status, res.response.encode() if isinstance(res.response, str) else res.response, res.mimetype)

    # ---- fast path ----------------------------------------------------------------
    def parse_fast(self, body: bytes, content_type: str | None) -> list[list[Any]]:
        """Rows of a request in signature order (lists of plain ints/floats, checked), or
        NotFast. They become a numpy array once per micro-batch (`rows_array`): one
        conversion for the batch costs less than one per request plus a concatenation."""
        spec = self.fast
        if spec is None or content_type != CONTENT_TYPE_JSON:
            raise NotFast
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise NotFast from None
        if type(doc) is not dict or len(doc) != 1:
            raise NotFast
        (key, payload), = doc.items()
        ncol = len(spec.columns)
        if key == "dataframe_split":
            if type(payload) is not dict or payload.keys() != _SPLIT_KEYS:
                raise NotFast
            cols, data = payload["columns"], payload["data"]
            if type(cols) is not list or type(data) is not list or not data:
                raise NotFast
            if cols == spec.column_list:
                rows = data
            else:
                # Only names can match: anything else (a list is not even hashable) is MLflow's to judge.
                if len(cols) != ncol or any(type(c) is not str for c in cols) or set(cols) != spec.index.keys():
                    raise NotFast
                order = [cols.index(c) for c in spec.columns]
                rows = [[r[i] for i in order] if type(r) is list and len(r) == ncol else None for r in data]
        elif key in ("dataframe_records", "instances", "inputs"):
            if type(payload) is list:
                if not payload:
                    raise NotFast
                rows = []
                for rec in payload:
                    if type(rec) is not dict or len(rec) != ncol:
                        raise NotFast
                    try:
                        rows.append([rec[c] for c in spec.columns])
                    except KeyError:
                        raise NotFast from None
            elif type(payload) is dict and key != "dataframe_records":
                # Columnar {"col": [values]}: what TF-serving style clients send.
                if payload.keys() != spec.index.keys():
                    raise NotFast
                cols = [payload[c] for c in spec.columns]
                if any(type(c) is not list for c in cols):
                    raise NotFast
                n = len(cols[0])
                if n == 0 or any(len(c) != n for c in cols):
                    raise NotFast
                rows = [list(r) for r in zip(*cols, strict=True)]
            else:
                raise NotFast
        else:
            raise NotFast
        allowed = _ALLOWED[spec.dtype]
        for r in rows:
            if type(r) is not list or len(r) != ncol or not allowed.issuperset(map(type, r)):
                raise NotFast
        return rows

    def rows_array(self, rows: list[list[Any]]) -> np.ndarray:
        """Checked rows (of one request or a whole batch) as a 2-D array, or NotFast.

        Column-major, as the array scikit-learn gets from the DataFrame pyfunc hands it (one
        block per dtype, stored column by column): BLAS rounds the last bit differently for
        the other layout, and a request scored alone then gets exactly MLflow's floats."""
        spec = self.fast
        assert spec is not None
        try:
            arr = np.array(rows, dtype=spec.dtype, order="F")
        except (OverflowError, ValueError):  # e.g. an integer beyond int64
            raise NotFast from None
        if arr.ndim != 2 or arr.shape[1] != len(spec.columns):
            raise NotFast
        return arr

    def predict_fast(self, rows: np.ndarray) -> np.ndarray:
        spec = self.fast
        assert spec is not None
        if spec.kernel is not None:
            return spec.kernel(rows)
        return self.predict_estimator(rows)

    def predict_estimator(self, rows: np.ndarray) -> np.ndarray:
        """The estimator's own prediction method on checked rows (what pyfunc would call)."""
        spec = self.fast
        assert spec is not None
        x: Any = rows
        if spec.frame_columns is not None:
            import pandas as pd

            x = pd.DataFrame(rows, columns=spec.frame_columns)
        import sklearn

        # Fast-path rows come from orjson, which rejects NaN and Infinity: the finiteness
        # scan cannot fail, so skip it (it and the parameter checks are ~15% of a small
        # predict). Only here: MLflow's path keeps sklearn's checks.
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            out = spec.predict(x)
        if isinstance(out, np.ndarray):
            return out
        # Pandas outputs would be serialised by MLflow differently from a plain array.
        raise NotFast


def encode_predictions(preds: np.ndarray) -> bytes:
    """`{"predictions": ...}` as MLflow writes it for a numpy result."""
    if preds.dtype.kind == "f" and not np.isfinite(preds).all():
        # MLflow writes NaN/Infinity literals (Python's json); orjson would write null.
        from mlflow.utils.proto_json_utils import NumpyEncoder

        return json.dumps({"predictions": preds.tolist()}, cls=NumpyEncoder).encode()
    if preds.dtype.kind in "fiub":
        return orjson.dumps({"predictions": preds.tolist()})
    # Strings and objects: let MLflow's encoder decide, exactly.
    from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj

    jsonable = _get_jsonable_obj(preds, pandas_orient="records")  # type: ignore[no-untyped-call]
    return json.dumps({"predictions": jsonable}, cls=NumpyEncoder).encode()


def encode_batch(preds: np.ndarray, counts: list[int]) -> list[bytes]:
    """`encode_predictions` for consecutive slices of one batch's predictions (`counts` rows
    each), converting the array to Python once for the whole batch."""
    if preds.dtype.kind in "iub" or (preds.dtype.kind == "f" and np.isfinite(preds).all()):
        values = preds.tolist()
        out = []
        start = 0
        for k in counts:
            out.append(orjson.dumps({"predictions": values[start:start + k]}))
            start += k
        return out
    out = []
    start = 0
    for k in counts:
        out.append(encode_predictions(preds[start:start + k]))
        start += k
    return out


# ---- loading ----------------------------------------------------------------------------


def resolve_device(requested: str, flavors: Sequence[str], cuda_available: Callable[[], bool]) -> str:
    """Where the model goes: only PyTorch models can use a GPU here.

    `cuda_available` is only called for PyTorch models, so torch is imported lazily
    and a CPU image without torch never needs it.
    """
    if "pytorch" not in flavors:
        return contract.DEVICE_CPU
    if requested == contract.DEVICE_CPU:
        return contract.DEVICE_CPU
    available = cuda_available()
    if requested == contract.DEVICE_CUDA and not available:
        raise RuntimeError(f"{contract.ENV_DEVICE}=cuda but torch sees no CUDA device")
    return contract.DEVICE_CUDA if available else contract.DEVICE_CPU


def _torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _fast_spec(pyfunc: Any) -> FastSpec | None:
    if getattr(pyfunc, "loader_module", None) != "mlflow.sklearn":
        return None
    meta = pyfunc.metadata
    schema = meta.get_input_schema()
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    if meta.get_params_schema() is not None or meta._is_signature_from_type_hint():
        return None
    types = {str(getattr(c.type, "name", c.type)) for c in schema.inputs}
    if len(types) != 1 or not types <= _FAST_TYPES.keys() or not all(c.required for c in schema.inputs):
        return None
    columns = tuple(schema.input_names())
    impl = pyfunc._model_impl
    estimator = getattr(impl, "sklearn_model", None)
    if estimator is None:
        return None
    bound = pyfunc._predict_fn
    # The wrapper's own `predict` only forwards to the estimator's; a custom
    # `pyfunc_predict_fn` (predict_proba, ...) is already the estimator's method.
    predict = estimator.predict if getattr(bound, "__func__", None) is type(impl).predict else bound
    names = getattr(estimator, "feature_names_in_", None)
    frame_columns = None
    if names is not None:
        if tuple(names) != columns:
            return None
        frame_columns = list(columns)
    (t,) = types
    return FastSpec(columns, {c: i for i, c in enumerate(columns)}, _FAST_TYPES[t], predict, frame_columns,
                    list(columns))


def import_model_libraries() -> None:
    """Import what loading a scikit-learn model in MLflow's format (skops) imports, before
    MLflow itself is imported. On import, skops builds its table of trusted types and looks
    for each scipy ufunc in every module loaded at that moment: about 1,450 when it comes
    first, twice as many after MLflow and the web stack. Both imports took 6.9 s in the one
    order and 9.2 s in the other, on a quiet core. A model of another flavour pays for
    scikit-learn's import."""
    import importlib

    try:
        importlib.import_module("skops.io")
    except ImportError:  # an image without scikit-learn's persistence: nothing to order
        pass


def _exported_program(local: str, pytorch_flavor: dict[str, Any]) -> Path | None:
    """The torch.export archive of a PyTorch model saved as MLflow 3 does by default
    (serialization_format "pt2"), or None (pickled)."""
    path = Path(local, pytorch_flavor.get("model_data", "data"), "model.pt2")
    return path if path.is_file() else None


def _load_pyfunc(local: str, meta: Any, device: str) -> Any:
    """MLflow's pyfunc model on `device`.

    MLflow's check of the model's requirements is off (`suppress_warnings`): it maps every
    installed distribution to its modules first, 0.7-0.8 s on a quiet core, as long again as
    the rest of a forked serving process's first load (0.55-0.75 s); environment_mismatches
    reads only the distributions the model names.

    An exported program (pt2) keeps its weights on the device it was exported on, and MLflow
    refuses to load it anywhere else: by default every PyTorch model logged on a machine
    without a GPU would then fail on a GPU replica (as `mlflow models serve` fails there). Such
    a model is loaded through MLflow on the device its weights hold, which also runs MLflow's
    check that the archive holds no pickles, and then moved with torch's own pass for
    exported programs (a module's `.to()` would leave the devices its graph names)."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    if "pytorch" not in meta.flavors:
        return mlflow.pyfunc.load_model(local, suppress_warnings=True)
    try:
        return mlflow.pyfunc.load_model(local, model_config={"device": device}, suppress_warnings=True)
    except MlflowException:
        exported = _exported_program(local, meta.flavors["pytorch"])
        if exported is None:
            raise
        held = contract.DEVICE_CPU if device == contract.DEVICE_CUDA else contract.DEVICE_CUDA
        try:
            pyfunc = mlflow.pyfunc.load_model(local, model_config={"device": held}, suppress_warnings=True)
        except Exception:  # noqa: BLE001 - not a question of devices: the first error says what is wrong
            pass
        else:
            import torch
            from torch.export.passes import move_to_device_pass

            wrapper = pyfunc._model_impl  # mlflow.pytorch's wrapper: the module and where its inputs go
            wrapper.pytorch_model = move_to_device_pass(torch.export.load(str(exported)), device).module()
            wrapper.device = device
            log.info("exported program moved to the replica's device",
                     extra={"exported_on": held, "device": device})
            return pyfunc
        raise


def load(name: str, version: str, alias: str, requested_device: str, predict_kernels: bool = True) -> LoadedModel:
    """Load one registry version (by number, so a concurrent alias move cannot mix versions)."""
    import mlflow.pyfunc
    from mlflow.models import Model

    uri = f"models:/{name}/{version}"
    # Our own directory per version, so it can be removed once the version is retired.
    local_dir = tempfile.mkdtemp(prefix=f"mlserve-v{version}-")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=local_dir)
        meta = Model.load(local)
        flavors = list(meta.flavors)
        device = resolve_device(requested_device, flavors, _torch_cuda_available)
        pyfunc = _load_pyfunc(local, meta, device)
        warn_environment_mismatches(name, version, local, meta.flavors.get("python_function", {}).get("python_version"))
        flavor = next((f for f in flavors if f != "python_function"), "python_function")
        model = LoadedModel(
            name=name, version=str(version), alias=alias, uri=uri, device=device, flavor=flavor, pyfunc=pyfunc,
            input_schema=pyfunc.metadata.get_input_schema(), fast=_fast_spec(pyfunc), local_dir=local_dir,
        )
        if predict_kernels:
            attach_kernel(model)
        warm_up(model)
    except BaseException:
        shutil.rmtree(local_dir, ignore_errors=True)  # a failed version leaves nothing behind
        raise
    return model


def environment_mismatches(model_dir: str, saved_with_python: str | None) -> list[str]:
    """What the model's files ask of this environment that it does not have: each requirement
    of its requirements.txt whose distribution is missing or at another version, and a Python
    of another major.minor version than the model was saved with (the warnings MLflow's loader
    prints, which load() turns off for their cost)."""
    import platform
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    found: list[str] = []
    requirements = Path(model_dir, "requirements.txt")
    lines = requirements.read_text().splitlines() if requirements.is_file() else []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):  # options (-r, -c, --index-url) are not requirements
            continue
        try:
            req = Requirement(text)
        except InvalidRequirement:  # a path or URL: nothing to compare by name
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        if req.name == "mlflow":
            import mlflow.version  # mlflow-skinny serves as mlflow

            installed: str | None = mlflow.version.VERSION
        else:
            try:
                installed = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                installed = None
        if installed is None:
            found.append(f"{text} (not installed)")
        elif req.specifier and not req.specifier.contains(installed):
            found.append(f"{text} (installed: {installed})")
    running = platform.python_version()
    if saved_with_python is not None and saved_with_python.split(".")[:2] != running.split(".")[:2]:
        found.append(f"python {saved_with_python} (running: {running})")
    return found


def warn_environment_mismatches(name: str, version: str, model_dir: str, saved_with_python: str | None) -> None:
    mismatches = environment_mismatches(model_dir, saved_with_python)
    if mismatches:
        log.warning("the model was saved in another environment; it may load or predict differently here",
                    extra={"model": name, "version": version, "mismatches": mismatches})


def _example_rows(model: LoadedModel) -> list[np.ndarray]:
    """The model's logged input example as fast-path rows (signature order and dtype), if it has one."""
    spec = model.fast
    assert spec is not None
    try:
        example = model.pyfunc.input_example
        import pandas as pd

        if isinstance(example, pd.DataFrame):
            return [example[list(spec.columns)].to_numpy(dtype=spec.dtype)]
    except Exception:  # noqa: BLE001 - no usable example: the seeded batches still check the kernel
        pass
    return []


def attach_kernel(model: LoadedModel) -> None:
    """Give the fast path a prediction kernel when the estimator has one that gives, on the
    model's example and on seeded batches, exactly what the estimator's own method gives."""
    spec = model.fast
    if spec is None:
        return
    estimator = getattr(spec.predict, "__self__", None)
    # Only where pyfunc calls `predict` itself: a custom pyfunc_predict_fn keeps the estimator.
    if estimator is None or getattr(spec.predict, "__name__", None) != "predict":
        return
    found = kernels.find_kernel(estimator)
    if found is None:
        return
    name, kernel = found
    probes = kernels.probe_batches(len(spec.columns), spec.dtype, _example_rows(model))
    if kernels.verified(kernel, model.predict_estimator, probes):
        spec.kernel, spec.kernel_name = kernel, name


def warm_up(model: LoadedModel) -> None:
    """Score once before taking traffic, so the first user does not pay for lazy imports
    and so a model that loads but cannot predict never replaces one that can."""
    if model.fast is not None:
        row = np.zeros((1, len(model.fast.columns)), dtype=model.fast.dtype)
        model.predict_fast(row)
        import pandas as pd

        model.pyfunc.predict(pd.DataFrame(row, columns=list(model.fast.columns)))
        return
    try:
        example = model.pyfunc.input_example  # read from the model's files: only where it is used
    except Exception:  # noqa: BLE001 - no example is fine
        return
    if example is not None:
        model.pyfunc.predict(example)
