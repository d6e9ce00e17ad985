"""Every installed model at its defaults x every category, beside the peer (anomalib 2.7.0).

The defaults of adcore's models were chosen on MVTec bottle. This suite judges them on
every category below, each cell (model x category) in its own process, measured by
``bench_models.run_one`` (image AUROC, pixel AUROC, AUPRO, fit s, test images/s, peak RSS),
and prints one matrix with each model's mean over the categories with masks.

Categories (real data under ``$ADCORE_DATASETS``, default ``../shared/datasets``):
``bottle`` (mvtec_ad/bottle), ``kolektorsdd``, ``juice_bottle`` (mvtec_loco/juice_bottle),
all in the MVTec layout with masks, and ``elpv`` (``elpv:mono``, image labels only: its
pixel columns stay blank and it is left out of the means).

Models: every detector the plugin registry lists, at its defaults as ``adcore fit`` gives
them: its ``Config`` defaults and the default input size (``adcore.default_input_size``: the
training images' aspect ratio kept, the short side at the detector's ``image_size``; bottle
stays 256 x 256, KolektorSDD gets 640 x 256). The only parameters given are the local
folders that a detector's defaults would otherwise look up from a resource provider (DRAEM's
textures, EfficientAD's penalty images): the ``{datasets}`` paths of bench_models' RUNS entry
of the same name. A detector
that cannot be built offline (WinCLIP without CLIP weights) is a "skip" cell with the
reason; video detectors skip image categories.

The peer: anomalib 2.7.0 in its own venv (``--peer-venv``), run by
``benchmarks/peer/run_anomalib.py`` on the same records adcore loads, at the same image
size, with the same backbone (``tf_efficientnet_lite0``, ImageNet weights written from
adcore's offline weights provider and checked tensor by tensor inside the peer process)
and the same feature layers and epochs as adcore's defaults; everything else is anomalib's
default. ``PEER_MODELS`` says which models it runs and why the others cannot run offline.

Resumable: each cell's result is a JSON file in the cache folder, keyed by tool, model,
category, adcore's git commit (or version) and the settings; a second run only runs the
missing cells. The revision of an adcore cell is the git objects at HEAD of the code it runs
(core/, the model's plugin folder, the weights plugins, bench_models.py), so a commit to
another plugin keeps it (a peer cell's revision is its spec and the runner's code);
``--any-revision`` reuses cells of older revisions (to finish a long
run while the code moves on). A crash is a recorded cell ("error"), as is a cell past its
time bound ("did not finish in N min"); ``--retry-failed`` runs those again, ``--rerun`` all.

    python benchmarks/bench_suite.py                        # everything (hours on 2 cores)
    python benchmarks/bench_suite.py --models padim,dfm --categories bottle,kolektorsdd \\
        --peer-models padim --peer-categories bottle --markdown suite.md
    ./dev bench-suite --models padim --no-peer
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))
import bench_models  # the measuring code: RUNS, run_one, DATASETS

#: Bump when a change to this file changes what a cell measures: old cache entries are then ignored.
SUITE_VERSION = 1
#: name -> folder under the datasets root (MVTec layout with masks) or an adcore data spec.
CATEGORIES = {
    "bottle": "mvtec_ad/bottle",
    "kolektorsdd": "kolektorsdd",
    "juice_bottle": "mvtec_loco/juice_bottle",
    "elpv": "elpv:mono",
}
BATCH_SIZE = 16
SEED = 0
PEER_VERSION = "2.7.0"
PEER_BACKBONE = "tf_efficientnet_lite0"
PEER_RUNNER = BENCHMARKS / "peer" / "run_anomalib.py"
SHARED_PEER_VENV = Path("/work/peer-venv")
CACHE_ROOT = Path("~/.cache/adcore").expanduser()

#: adcore detector -> anomalib 2.7.0's counterpart: (class, parameters, makes anomaly maps),
#: parameters chosen to match adcore's defaults (backbone, feature indices, sizes of the
#: method); or a string: why it cannot run offline with our backbone. Image size and epochs
#: come from the adcore detector's defaults.
PEER_MODELS: dict[str, tuple[str, dict, bool] | str] = {
    "padim": ("Padim", {"backbone": PEER_BACKBONE, "layers": [1, 2, 3], "n_features": 100}, True),
    "patchcore": ("Patchcore", {"backbone": PEER_BACKBONE, "layers": [2, 3], "coreset_sampling_ratio": 0.1}, True),
    "stfpm": ("Stfpm", {"backbone": PEER_BACKBONE, "layers": [1, 2, 3]}, True),
    "dfm": ("Dfm", {"backbone": PEER_BACKBONE, "layer": 3}, True),
    "dfkde": ("Dfkde", {"backbone": PEER_BACKBONE, "layers": [4]}, False),
    "cflow": ("Cflow", {"backbone": PEER_BACKBONE, "layers": [2, 3, 4]}, True),
    "ganomaly": ("Ganomaly", {}, False),  # no backbone: its own encoder-decoder
    "draem": ("Draem", {"dtd_dir": "{datasets}/dtd_subset"}, True),  # no backbone; DTD textures from disk
    "cfa": "anomalib 2.7.0's Cfa accepts only vgg19_bn, resnet18, wide_resnet50_2 and efficientnet_b5 (hub weights)",
    "fastflow": "anomalib 2.7.0's Fastflow accepts only cait_m48_448, deit_base_distilled_patch16_384, resnet18, wide_resnet50_2",
    "csflow": "anomalib 2.7.0's Csflow hard-codes torchvision's EfficientNet-B5 with IMAGENET1K_V1 weights (a download)",
    "uflow": "anomalib 2.7.0's Uflow accepts only mcait (CaiT-M48 + CaiT-S24 hub weights), resnet18, wide_resnet50_2",
    "reverse_distillation": "anomalib 2.7.0's bottleneck and decoder exist only for ResNet backbones",
    "efficientad": "anomalib 2.7.0's EfficientAd downloads its pretrained PDN teacher and Imagenette",
    "winclip": "anomalib 2.7.0's WinClip downloads CLIP ViT-B-16-plus-240 weights",
    "rkde": "anomalib 2.7.0 has no R-KDE",
    "pixel-zscore": "adcore's example plugin: no anomalib counterpart",
}
#: Folders a detector's defaults would look up from a resource provider: taken from bench_models.RUNS.
RESOURCE_KEYS = ("textures", "penalty_images")


# ----------------------------------------------------------------------------- settings and cache


def datasets_root() -> Path:
    return Path(bench_models.DATASETS)


def data_spec(category: str) -> str:
    """The adcore data spec of a category: ``mvtec:<folder>`` or the spec itself (``elpv:mono``)."""
    where = CATEGORIES[category]
    return where if where.startswith("elpv:") else f"mvtec:{datasets_root() / where}"


def has_masks(category: str) -> bool:
    return not CATEGORIES[category].startswith("elpv:")


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def plugin_folder(model: str) -> str | None:
    """The repository folder (relative to the root) of the distribution holding ``model``, or None."""
    import importlib.util

    from adcore.plugins import get_registry

    package = get_registry().card(model).target.partition(":")[0].split(".")[0]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).resolve().parent
    while folder != folder.parent and not (folder / "pyproject.toml").exists():
        folder = folder.parent
    try:
        return str(folder.relative_to(ROOT))
    except ValueError:
        return None  # installed from elsewhere


def adcore_revision(model: str | None = None) -> str:
    """What a cell of ``model`` measured: the git objects at HEAD of the code it runs (the core,
    the model's plugin folder, the weights plugins, bench_models.py), so a commit elsewhere in
    the repository keeps its cached cells; outside a git checkout, the installed versions."""
    from importlib.metadata import version

    paths = ["core", "plugins/weights-efficientnet-lite", "plugins/weights-pdn-teachers", "benchmarks/bench_models.py"]
    folder = plugin_folder(model) if model else None
    paths += [folder] if folder else []
    objects = [_git("rev-parse", f"HEAD:{path}") or "untracked" for path in paths]
    if _git("rev-parse", "HEAD") is None:
        return f"adcore-{version('adcore')}" + (f"/{model}" if model else "")
    return hashlib.sha256(" ".join(f"{p}={o}" for p, o in zip(paths, objects, strict=True)).encode()).hexdigest()[:16]


def uncommitted(model: str) -> list[str]:
    """Files with changes not in HEAD under the paths a cell's revision covers (recorded, not keyed)."""
    paths = ["core", "plugins/weights-efficientnet-lite", "benchmarks/bench_models.py"]
    paths += [f] if (f := plugin_folder(model)) else []
    status = _git("status", "--porcelain", "--", *paths) or ""
    return [line.split(maxsplit=1)[-1] for line in status.splitlines()]


def settings() -> dict:
    """Everything besides model, category, tool and revision that changes a cell's numbers."""
    return {"suite": SUITE_VERSION, "batch_size": BATCH_SIZE, "seed": SEED, "datasets": str(datasets_root())}


def settings_hash(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def default_cache() -> Path:
    return CACHE_ROOT / "bench-suite" / f"v{SUITE_VERSION}-{settings_hash(settings())}"


def cell_key(tool: str, model: str, category: str, revision: str, values: dict) -> dict:
    return {"tool": tool, "model": model, "category": category, "revision": revision, "settings": values}


def cell_path(cache: Path, key: dict) -> Path:
    digest = settings_hash(key)
    return cache / f"{key['tool']}--{key['model']}--{key['category']}--{digest}.json"


def load_cell(cache: Path, key: dict) -> dict | None:
    path = cell_path(cache, key)
    if not path.is_file():
        return None
    try:
        cell = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a half-written file from a killed run: run the cell again
    return cell if cell.get("key") == key else None


def load_any_revision(cache: Path, key: dict) -> dict | None:
    """The newest cached cell of the same tool, model, category and settings, measured on any
    revision (``--any-revision``: finish a long run while the code moves on)."""
    newest = None
    for path in cache.glob(f"{key['tool']}--{key['model']}--{key['category']}--*.json"):
        try:
            cell = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        same = {**cell.get("key", {}), "revision": None} == {**key, "revision": None}
        if same and (newest is None or _age_order(cell) > _age_order(newest)):
            newest = cell
    return newest


def _age_order(cell: dict) -> tuple[str, int]:
    """Newer cells sort higher: when they finished, then when they were saved (cells written in
    the same second, or without ``finished_at``, would otherwise tie and the glob order decide)."""
    return cell.get("finished_at", ""), cell.get("saved_ns", 0)


def save_cell(cache: Path, cell: dict) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    path = cell_path(cache, cell["key"])
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({**cell, "saved_ns": cell.get("saved_ns", time.time_ns())}, indent=1))
    temporary.replace(path)  # atomic: a killed run never leaves half a result


def needs_run(cached: dict | None, timeout_min: float, rerun: bool = False, retry_failed: bool = False) -> bool:
    """Whether a cell must run: missing, forced, failed (with --retry-failed), or timed out under a
    shorter bound than the one asked for now."""
    if cached is None or rerun:
        return True
    status = cached.get("status")
    if status == "timeout":
        return retry_failed or cached.get("timeout_min", 0) < timeout_min
    if status == "error":
        return retry_failed
    return False


# ----------------------------------------------------------------------------- running a cell


def run_process(command: list[str], timeout_min: float, cwd: Path | None = None) -> dict:
    """Run one cell in its own process (session), killed with its children past ``timeout_min``.
    Returns a cell body: status ok (with the JSON of its last stdout line), error or timeout."""
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=cwd, start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout_min * 60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = None
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    body = {
        "wall_s": round(time.perf_counter() - started, 1),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "timeout_min": timeout_min,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if returncode is None:
        return {**body, "status": "timeout", "message": f"did not finish in {timeout_min:g} min"}
    lines = stdout.strip().splitlines()
    if returncode != 0 or not lines:
        tail = stderr.strip().splitlines()[-1:] or [f"exit status {returncode}"]
        return {**body, "status": "error", "message": tail[0][:300], "stderr_tail": stderr[-3000:]}
    try:
        row = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {
            **body,
            "status": "error",
            "message": f"no JSON result: {lines[-1][:200]}",
            "stderr_tail": stderr[-3000:],
        }
    if "skipped" in row:
        return {**body, "status": "skipped", "message": row["skipped"]}
    return {**body, "status": "ok", "metrics": row}


def resource_params(detector: str) -> dict:
    """The local folders a detector's defaults would look up from a resource provider (bench_models.RUNS)."""
    params = bench_models.RUNS.get(detector, (detector, {}, "fp32"))[1]
    return {k: v for k, v in params.items() if k in RESOURCE_KEYS}


def default_size(model: str, category: str) -> tuple[int, int]:
    """The input size ``adcore fit`` gives ``model`` on the category when none is asked for: the
    training images' aspect ratio kept, the short side at the detector's ``image_size``."""
    from adcore import default_input_size, load_data
    from adcore.plugins import get_registry

    detector_class = get_registry().detector_class(model)
    size = default_input_size(detector_class, load_data(data_spec(category)).train)
    return tuple(size) if size is not None else tuple(detector_class.Config().image_size)


def adcore_cell(model: str, category: str) -> dict:
    """Inside the cell's process: the detector at its defaults, measured by bench_models.run_one."""
    from adcore import ResourceNotFoundError, WeightsNotFoundError, create_detector

    params = resource_params(model)
    resolved = {k: v.format(datasets=datasets_root()) for k, v in params.items()}
    try:
        detector = create_detector(model, seed=SEED, **resolved)
    except (ResourceNotFoundError, WeightsNotFoundError) as exc:
        return {"skipped": f"needs what is not here offline: {str(exc).splitlines()[0][:200]}"}
    if detector.input_spec.clip_length > 1:
        return {"skipped": "video detector: image categories do not apply"}
    del detector
    size = default_size(model, category)
    run_name = f"suite:{model}"
    bench_models.RUNS[run_name] = (model, params, "fp32")
    row = bench_models.run_one(run_name, data_spec(category), size, BATCH_SIZE, None)
    return {**row, "image_size": list(size), "params": params}


def adcore_command(model: str, category: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--cell", json.dumps([model, category])]


# ----------------------------------------------------------------------------- the peer


def peer_version(venv: Path) -> str | None:
    """anomalib's version in ``venv``, or None when it has no anomalib (or no python)."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    probe = "import importlib.metadata as m; print(m.version('anomalib'))"
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return result.stdout.strip() or None if result.returncode == 0 else None


def peer_install_commands(venv: Path) -> list[list[str]]:
    """How the peer venv is made: a plain venv, then anomalib 2.7.0 with torch pinned to the
    version adcore runs on (anomalib's own dependencies bring lightning, timm, FrEIA, kornia,
    torchmetrics; the models the suite runs need nothing more)."""
    import torch

    torch_version = torch.__version__.split("+")[0]
    python = str(venv / "bin" / "python")
    return [
        [sys.executable, "-m", "venv", str(venv)],
        [python, "-m", "pip", "install", "--upgrade", "pip"],
        [python, "-m", "pip", "install", f"anomalib=={PEER_VERSION}", f"torch=={torch_version}"],
    ]


def ensure_peer_venv(requested: str | None) -> Path:
    """The venv with anomalib 2.7.0: ``--peer-venv`` (created there when missing), else
    /work/peer-venv when it holds 2.7.0, else ~/.cache/adcore/peer-venv (created when missing)."""
    if requested:
        venv = Path(requested).expanduser()
    elif peer_version(SHARED_PEER_VENV) == PEER_VERSION:
        return SHARED_PEER_VENV
    else:
        venv = CACHE_ROOT / "peer-venv"
    found = peer_version(venv)
    if found == PEER_VERSION:
        return venv
    if found is not None:
        raise SystemExit(f"{venv} holds anomalib {found}, not {PEER_VERSION}: pass another --peer-venv")
    print(f"creating the peer venv {venv} (anomalib {PEER_VERSION}, several GB)", file=sys.stderr, flush=True)
    for command in peer_install_commands(venv):
        subprocess.run(command, check=True)
    return venv


def peer_weights(cache: Path) -> Path:
    """ImageNet tf_efficientnet_lite0 weights from adcore's offline provider, as a safetensors file for timm."""
    path = cache / f"{PEER_BACKBONE}.safetensors"
    if not path.exists():
        from adcore import resolve_weights
        from safetensors.torch import save_file

        resolved = resolve_weights(PEER_BACKBONE)
        if resolved.state_dict is None:
            raise SystemExit(f"no offline weights for {PEER_BACKBONE} (source {resolved.source})")
        cache.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in resolved.state_dict.items()}, str(path))
    return path


def adcore_defaults(model: str, category: str) -> dict:
    """The detector's default input size on the category and its default epochs (the peer gets the same)."""
    from adcore.plugins import get_registry

    epochs = getattr(get_registry().detector_class(model).Config(), "epochs", None)
    return {"image_size": list(default_size(model, category)), "epochs": epochs}


def peer_spec(model: str, category: str) -> dict:
    """The peer cell's spec: anomalib's model and parameters, adcore's default input size and epochs,
    the records adcore loads for the category (``weights`` is added when the cell runs)."""
    from adcore import load_data

    anomalib_class, params, maps = PEER_MODELS[model]
    splits = load_data(data_spec(category))
    as_dicts = lambda records: [
        {"path": str(r.path), "label": r.label, "mask": str(r.mask_path) if r.mask_path else None} for r in records
    ]
    defaults = adcore_defaults(model, category)
    return {
        "model": anomalib_class,
        "params": {k: v.format(datasets=datasets_root()) if isinstance(v, str) else v for k, v in params.items()},
        "backbone": PEER_BACKBONE if "backbone" in params else None,
        "maps": maps,
        "has_masks": splits.has_masks,
        "category": category,
        "image_size": defaults["image_size"],
        "epochs": defaults["epochs"],
        "seed": SEED,
        "train": as_dicts(splits.train),
        "test": as_dicts(splits.test),
    }


def peer_revision(spec: dict) -> str:
    """What a peer cell measured: its spec (model, sizes, epochs, images) and the runner's code."""
    text = json.dumps(spec, sort_keys=True) + PEER_RUNNER.read_text()
    return f"{PEER_VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


# ----------------------------------------------------------------------------- the matrix

COLUMNS = (("image_auroc", "img", ".3f"), ("pixel_auroc", "pix", ".3f"), ("pixel_aupro", "PRO", ".3f"),
           ("fit_s", "fit s", ".0f"), ("test_img_s", "img/s", ".1f"), ("peak_rss_mb", "RSS MB", ".0f"))  # fmt: skip
STATUS_MARK = {"skipped": "skip", "timeout": "timeout", "error": "error"}


def row_label(tool: str, model: str) -> str:
    return model if tool == "adcore" else f"{model} (anomalib)"


def model_means(cells: dict, tool: str, model: str, categories: list[str]) -> dict:
    """Mean image and pixel AUROC over the categories with masks where the cell succeeded;
    ``complete`` is False when a category with masks is missing or failed."""
    masked = [c for c in categories if has_masks(c)]
    done = [cells.get((tool, model, c)) for c in masked]
    done = [cell for cell in done if cell and cell["status"] == "ok"]
    means = {}
    for field in ("image_auroc", "pixel_auroc"):
        values = [cell["metrics"].get(field) for cell in done if cell["metrics"].get(field) is not None]
        means[field] = sum(values) / len(values) if values else None
    means["complete"] = bool(masked) and len(done) == len(masked)
    return means


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_matrix(cells: dict, rows: list[tuple[str, str]], categories: list[str]) -> str:
    """One text table: a row per (tool, model), per category image/pixel AUROC, AUPRO, fit s,
    test img/s, peak RSS; then the means over categories with masks and the notes."""
    width = 8
    label_width = max([len(row_label(*r)) for r in rows] + [12]) + 2
    head1 = (
        " " * label_width
        + "".join(f"{c:^{width * len(COLUMNS)}}" for c in categories)
        + f"{'mean (masks)':^{2 * width}}"
    )
    head2 = f"{'model':<{label_width}}" + "".join(f"{h:>{width}}" for _ in categories for _, h, _ in COLUMNS)
    head2 += f"{'img':>{width}}{'pix':>{width}}"
    lines, notes = [head1, head2], []
    for tool, model in rows:
        line = f"{row_label(tool, model):<{label_width}}"
        for category in categories:
            cell = cells.get((tool, model, category))
            if cell is None:
                line += f"{'(not run)':>{width * len(COLUMNS)}}"
            elif cell["status"] != "ok":
                mark = STATUS_MARK[cell["status"]]
                notes.append(f"{row_label(tool, model)} on {category}: {mark}: {cell.get('message', '')}")
                line += f"{mark:>{width * len(COLUMNS)}}"
            else:
                metrics = cell["metrics"]
                for key, _, spec in COLUMNS:
                    value = None if key.startswith("pixel") and not has_masks(category) else metrics.get(key)
                    line += f"{_fmt(value, spec):>{width}}"
        means = model_means(cells, tool, model, categories)
        star = "" if means["complete"] else "*"
        line += "".join(
            f"{_fmt(means[f], '.3f') + (star if means[f] is not None else ''):>{width}}"
            for f in ("image_auroc", "pixel_auroc")
        )
        lines.append(line)
    masked = any(has_masks(c) for c in categories)
    if masked and any(not model_means(cells, t, m, categories)["complete"] for t, m in rows):
        lines.append("* mean over fewer than all categories with masks (a cell missing, skipped or failed)")
    return "\n".join(lines + [""] + notes)


def format_markdown(cells: dict, rows: list[tuple[str, str]], categories: list[str], header: str) -> str:
    """The matrix for the docs: per category 'image / pixel AUROC / AUPRO' and 'fit s, img/s, MB'."""
    columns = ["model"]
    for category in categories:
        columns += [f"{category}: image / pixel AUROC / AUPRO", f"{category}: fit s · test img/s · peak MB"]
    columns += ["mean image AUROC (masks)", "mean pixel AUROC (masks)"]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    notes = []
    for tool, model in rows:
        parts = [row_label(tool, model)]
        for category in categories:
            cell = cells.get((tool, model, category))
            if cell is None:
                parts += ["not run", ""]
            elif cell["status"] != "ok":
                parts += [STATUS_MARK[cell["status"]], ""]
                notes.append(f"- {row_label(tool, model)} on {category}: {cell.get('message', '')}")
            else:
                m = cell["metrics"]
                pixel = has_masks(category)
                accuracy = " / ".join(
                    _fmt(m.get(k) if (pixel or k == "image_auroc") else None, ".3f")
                    for k in ("image_auroc", "pixel_auroc", "pixel_aupro")
                )
                cost = f"{_fmt(m.get('fit_s'), '.0f')} · {_fmt(m.get('test_img_s'), '.1f')} · {_fmt(m.get('peak_rss_mb'), '.0f')}"
                parts += [accuracy, cost]
        means = model_means(cells, tool, model, categories)
        star = "" if means["complete"] else "\\*"
        parts += [
            _fmt(means[f], ".3f") + (star if means[f] is not None else "") for f in ("image_auroc", "pixel_auroc")
        ]
        lines.append("| " + " | ".join(parts) + " |")
    lines.append("")
    lines.append("\\* mean over fewer than all categories with masks. ELPV has image labels only.")
    return "\n".join(lines + notes) + "\n"


# ----------------------------------------------------------------------------- main


def installed_models() -> list[str]:
    from adcore.plugins import get_registry

    return sorted(get_registry().detectors)


def pick(text: str | None, known: list[str], what: str) -> list[str]:
    if not text:
        return list(known)
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in known]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated detectors (default: every installed one)")
    parser.add_argument("--categories", help=f"comma-separated, of {', '.join(CATEGORIES)} (default: all)")
    parser.add_argument("--cache", help="cache folder (default: ~/.cache/adcore/bench-suite/<version-settings hash>/)")
    parser.add_argument("--rerun", action="store_true", help="run every selected cell again")
    parser.add_argument(
        "--any-revision",
        action="store_true",
        help="reuse a cell measured on another revision of the code (the newest) instead of running it again",
    )
    parser.add_argument("--retry-failed", action="store_true", help="run failed and timed-out cells again")
    parser.add_argument("--timeout", type=float, default=60, help="minutes per adcore cell (default 60)")
    parser.add_argument(
        "--peer", action=argparse.BooleanOptionalAction, default=True, help="run anomalib beside (default on)"
    )
    parser.add_argument("--peer-models", help="models for the peer (default: the selected ones it can run)")
    parser.add_argument("--peer-categories", help="categories for the peer (default: the selected ones)")
    parser.add_argument(
        "--peer-venv", help="venv with anomalib 2.7.0 (default: /work/peer-venv, else ~/.cache/adcore/peer-venv)"
    )
    parser.add_argument("--peer-timeout", type=float, default=30, help="minutes per peer cell (default 30)")
    parser.add_argument("--markdown", help="also write the matrix as Markdown to this file")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        model, category = json.loads(args.cell)
        print(json.dumps(adcore_cell(model, category)))
        return

    models = pick(args.models, installed_models(), "models")
    categories = pick(args.categories, list(CATEGORIES), "categories")
    cache = Path(args.cache).expanduser() if args.cache else default_cache()
    commit, values = _git("rev-parse", "HEAD") or "no git", settings()
    print(f"cache {cache}\ncommit {commit}, settings {values}, load {os.getloadavg()}", flush=True)

    jobs = [("adcore", m, c, args.timeout) for m in models for c in categories]
    unavailable = {}
    if args.peer:
        peer_models = pick(args.peer_models, models, "peer models")
        unavailable = {
            m: PEER_MODELS.get(m, "no anomalib counterpart listed")
            for m in peer_models
            if not isinstance(PEER_MODELS.get(m), tuple)
        }
        peer_categories = pick(args.peer_categories, categories, "peer categories")
        jobs += [
            ("anomalib", m, c, args.peer_timeout) for m in peer_models if m not in unavailable for c in peer_categories
        ]
    peer_tool = f"anomalib-{PEER_VERSION}"

    cells: dict = {}
    venv = weights = None
    revisions: dict[str, str] = {}
    for tool, model, category, timeout in jobs:
        if tool == "adcore":
            if model not in revisions:
                revisions[model] = adcore_revision(model)
            revision = revisions[model]
            key = cell_key(tool, model, category, revision, values)
        else:
            spec = peer_spec(model, category)
            key = cell_key(peer_tool, model, category, peer_revision(spec), values)
        cached = load_cell(cache, key) or (load_any_revision(cache, key) if args.any_revision else None)
        if not needs_run(cached, timeout, args.rerun, args.retry_failed):
            cells[(tool, model, category)] = cached
            other = "" if cached["key"] == key else f" (revision {cached['key']['revision']})"
            print(f"cached  {tool:<8} {model:<22} {category:<13} {cached['status']}{other}", flush=True)
            continue
        print(f"running {tool:<8} {model:<22} {category:<13} (bound {timeout:g} min) ...", flush=True)
        if tool == "adcore":
            body = run_process(adcore_command(model, category), timeout, cwd=ROOT)
            body["uncommitted"] = uncommitted(model)
        else:
            venv = venv or ensure_peer_venv(args.peer_venv)
            weights = weights or peer_weights(cache)
            path = cache / "peer-specs" / f"{model}-{category}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**spec, "weights": str(weights)}))
            body = run_process([str(venv / "bin" / "python"), str(PEER_RUNNER), str(path)], timeout, cwd=ROOT)
        cell = {"key": key, **body}
        save_cell(cache, cell)
        cells[(tool, model, category)] = cell
        summary = cell.get("message") or {k: round(v, 4) for k, v in cell["metrics"].items() if isinstance(v, float)}
        print(
            f"        {cell['status']} in {cell.get('wall_s')} s, load {cell.get('load_after')}: {summary}", flush=True
        )

    rows = [("adcore", m) for m in models]
    if args.peer:
        rows += [("anomalib", m) for m in peer_models if m not in unavailable]
    print()
    print(format_matrix(cells, rows, categories))
    for model, why in unavailable.items():
        print(f"peer cannot run {model} offline: {why}")
    if args.markdown:
        header = (
            f"adcore {commit[:12]} vs anomalib {PEER_VERSION}; each model at its defaults, "
            f"batch {BATCH_SIZE}, seed {SEED}, fp32, CPU; cells from {cache}"
        )
        text = format_markdown(cells, rows, categories, header)
        if unavailable:
            text += "\nThe peer cannot run offline:\n" + "".join(f"- {m}: {w}\n" for m, w in unavailable.items())
        Path(args.markdown).write_text(text)
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
