"""Reading task files and the hub, and the MeZO sampling protocol."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zojax.tasks.registry import Task, get_task
from zojax.tasks.templates import Example

class DataFormatError(ValueError):
    """A data row that cannot be read; the message starts with ``file:line``."""


class HubUnreachableError(ConnectionError):
    """The Hugging Face hub could not be reached."""


@dataclasses.dataclass(frozen=True)
class TaskData:
    """Sampled splits of one task.

    Attributes:
      task: the registry entry.
      train, dev: disjoint samples of the training split.
      test: a sample of the validation split.
      heldout: a sample of the training split disjoint from train and dev (empty unless
        asked for), drawn from the end of the shuffled split so that it does not depend
        on the train and dev sizes.
      notes: how the samples were drawn where that departs from the protocol, and
        where they came from.
    """

    task: Task
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    notes: tuple[str, ...]
    heldout: list[Example] = dataclasses.field(default_factory=list)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFormatError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None


def _tsv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """Rows of a TSV file with a header line, as dicts (no quoting, as in GLUE)."""
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        for lineno, line in enumerate(f, 2):
            values = line.rstrip("\r\n").split("\t")
            if values == [""]:
                continue
            if len(values) != len(header):
                raise DataFormatError(
                    f"{path}:{lineno}: {len(values)} tab-separated fields, expected {len(header)} ({header})"
                )
            yield f"{path}:{lineno}", dict(zip(header, values))


def _wic_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """The WiC authors' release: ``<split>.data.txt`` and, if present, ``<split>.gold.txt``."""
    gold_path = path.with_name(path.name.replace(".data.txt", ".gold.txt"))
    data = path.read_text(encoding="utf-8").splitlines()
    gold = gold_path.read_text(encoding="utf-8").splitlines() if gold_path.exists() else None
    if gold is not None and len(gold) != len(data):
        raise DataFormatError(f"{gold_path}:{len(gold)}: {len(gold)} labels for {len(data)} rows in {path}")
    for i, line in enumerate(data):
        values = line.split("\t")
        if len(values) != 5:
            raise DataFormatError(f"{path}:{i + 1}: {len(values)} tab-separated fields, expected 5")
        label = None
        if gold is not None:
            label = {"T": "true", "F": "false"}.get(gold[i].strip())
            if label is None:
                raise DataFormatError(f"{gold_path}:{i + 1}: label {gold[i]!r} is neither T nor F")
        word, _, _, sentence1, sentence2 = values
        row = {"word": word, "sentence1": sentence1, "sentence2": sentence2, "label": label}
        yield f"{path}:{i + 1}", row


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _squad_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """SQuAD v1.1 JSON, one row per question (JSON paths stand in for line numbers)."""
    where = str(path)
    try:
        for i, article in enumerate(_read_json(path)["data"]):
            for j, paragraph in enumerate(article["paragraphs"]):
                where = f"{path}: data[{i}].paragraphs[{j}]"
                for k, qa in enumerate(paragraph["qas"]):
                    row = {"title": article["title"], "context": paragraph["context"], **qa}
                    yield f"{where}.qas[{k}]", row
    except KeyError as e:
        raise DataFormatError(f"{where}: missing field {e.args[0]!r}") from None


def _drop_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """DROP JSON, one row per question."""
    where = str(path)
    try:
        for passage_id, item in _read_json(path).items():
            where = f"{path}: {passage_id}"
            for k, qa in enumerate(item["qa_pairs"]):
                yield f"{where}.qa_pairs[{k}]", {"passage": item["passage"], **qa}
    except KeyError as e:
        raise DataFormatError(f"{where}: missing field {e.args[0]!r}") from None


def _file_rows(task: Task, path: Path) -> Iterator[tuple[str, Any]]:
    name = path.name
    if name.endswith(".jsonl"):
        return _jsonl_rows(path)
    if name.endswith(".tsv"):
        return _tsv_rows(path)
    if name.endswith(".data.txt"):
        return _wic_rows(path)
    if name.endswith(".json") and task.name in ("squad", "drop"):
        return {"squad": _squad_rows, "drop": _drop_rows}[task.name](path)
    raise ValueError(f"{path}: not a file format of task {task.name!r}")


def _examples(task: Task, rows: Iterator[tuple[str, Any]]) -> list[Example]:
    """Normalise and render rows; a bad row raises DataFormatError naming where it is."""
    out = []
    for where, row in rows:
        try:
            out.extend(task.template(record) for record in task.records(row))
        except KeyError as e:
            raise DataFormatError(f"{where}: missing field {e.args[0]!r}") from None
        except (ValueError, TypeError, AttributeError) as e:
            raise DataFormatError(f"{where}: {e}") from None
    return out


def read_file(name: str, path: str | Path) -> list[Example]:
    """All examples of one local file of task ``name``, in file order.

    Formats: SuperGLUE ``.jsonl``; GLUE ``.tsv`` with a header; the WiC release
    (``.data.txt`` next to ``.gold.txt``); SQuAD v1.1 and DROP ``.json``.
    Rows without labels give examples with ``gold=None``.
    """
    task = get_task(name)
    return _examples(task, _file_rows(task, Path(path)))


def _local_split(task: Task, folder: Path, split: str) -> Path | None:
    for name in task.files.get(split, ()):
        if (folder / name).is_file():
            return folder / name
    return None


def _hub_split(task: Task, split: str) -> list[Example]:
    where = "/".join(filter(None, task.hub))
    try:
        import datasets
    except ImportError:
        raise ModuleNotFoundError(
            f"loading task {task.name!r} from the Hugging Face hub ({where}) needs the datasets package: "
            f"pip install 'zojax[hub]', or pass data_dir= pointing to the task's files (e.g. {task.folder}/"
            f"{task.files['validation'][0]})"
        ) from None
    try:
        rows = datasets.load_dataset(*task.hub, split=split)
    except ConnectionError as e:
        raise HubUnreachableError(
            f"cannot load task {task.name!r} ({where}): the Hugging Face hub is unreachable ({e}); "
            f"pass data_dir= pointing to the task's files (e.g. {task.folder}/"
            f"{task.files['validation'][0]})"
        ) from e
    return _examples(task, ((f"{where}[{split}] row {i}", row) for i, row in enumerate(rows)))


def _check_labelled(examples: Sequence[Example], source: str) -> None:
    missing = sum(ex.gold is None for ex in examples)
    if missing:
        raise ValueError(f"{source}: {missing} of {len(examples)} rows have no label")


def load_task(
    name: str,
    data_dir: str | Path | None = None,
    num_train: int | None = None,
    num_dev: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
    num_heldout: int = 0,
) -> TaskData:
    """Sample a task by the MeZO protocol.

    ``num_train`` train and ``num_dev`` dev examples are drawn disjointly from the
    training split, ``num_test`` test examples from the validation split, with a
    generator seeded by ``seed``. Sizes default to the task's ``sizes`` (1000, 500,
    1000; dev 100 for CB and COPA). Where the training split is smaller, dev keeps
    its size and train gets the rest; where the validation split is smaller, test
    gets all of it. Without a training split (e.g. BoolQ or SQuAD offline), all three
    are drawn disjointly from the validation split, as ``notes`` says.
    ``num_heldout`` more examples of the training split (the last of its shuffled order,
    disjoint from train and dev) form ``heldout``; with 0 the sample is as without it.

    ``data_dir``: the folder with the task's files, or a folder holding it under
    the task's folder name (e.g. ``data/RTE``). ``None`` reads the Hugging Face hub
    (for tiny_sentiment: the package's copy).
    """
    task = get_task(name)
    sizes = [d if n is None else n for n, d in zip((num_train, num_dev, num_test), task.sizes)]
    data_dir = data_dir if data_dir is not None else task.data_dir
    if data_dir is None:
        pools = {split: _hub_split(task, split) for split in ("train", "validation")}
        notes = [f"read from the Hugging Face hub ({task.hub[0]})"]
    else:
        folder = Path(data_dir) / task.folder
        folder = folder if folder.is_dir() else Path(data_dir)
        paths = {split: _local_split(task, folder, split) for split in ("train", "validation")}
        if paths["validation"] is None:
            raise FileNotFoundError(
                f"no validation file of task {task.name!r} in {folder} "
                f"(expected one of {task.files['validation']})"
            )
        pools = {s: None if p is None else read_file(task.name, p) for s, p in paths.items()}
        notes = [f"read from {', '.join(str(p) for p in paths.values() if p)}"]
    for split, pool in pools.items():
        if pool is not None:
            _check_labelled(pool, f"{task.name} {split}")
    train, dev, test, heldout, sampling_notes = _sample(pools["train"], pools["validation"], *sizes, seed, num_heldout)
    return TaskData(task, train, dev, test, (*notes, *sampling_notes), heldout)


def _sample(
    train_pool: list[Example] | None,
    val_pool: list[Example],
    num_train: int,
    num_dev: int,
    num_test: int,
    seed: int,
    num_heldout: int = 0,
) -> tuple[list[Example], list[Example], list[Example], list[Example], list[str]]:
    rng = np.random.default_rng(seed)
    notes = []
    if train_pool is None:
        if num_train + num_dev + num_test + num_heldout > len(val_pool):
            raise ValueError(
                f"no training split: {num_train} + {num_dev} + {num_test} + {num_heldout} (held out) examples "
                f"requested from {len(val_pool)} validation rows"
            )
        shuffled = [val_pool[i] for i in rng.permutation(len(val_pool))]
        test, rest = shuffled[:num_test], shuffled[num_test:]
        heldout, rest = rest[len(rest) - num_heldout :], rest[: len(rest) - num_heldout]
        notes.append(
            f"no training split: train, dev and test were drawn disjointly from the "
            f"{len(val_pool)} validation rows"
        )
        return rest[:num_train], rest[num_train : num_train + num_dev], test, heldout, notes
    if num_heldout and num_dev + num_heldout > len(train_pool):
        raise ValueError(
            f"the training split has {len(train_pool)} rows: too few for num_dev={num_dev} and "
            f"num_heldout={num_heldout} disjoint examples"
        )
    kept_train = max(0, min(num_train, len(train_pool) - num_dev - num_heldout))
    if num_train and not kept_train:
        raise ValueError(
            f"the training split has {len(train_pool)} rows: too few for num_dev={num_dev} "
            "and any training examples; lower num_dev"
        )
    shuffled = [train_pool[i] for i in rng.permutation(len(train_pool))]
    train, dev = shuffled[:kept_train], shuffled[kept_train : kept_train + num_dev]
    heldout = shuffled[len(shuffled) - num_heldout :]
    test = [val_pool[i] for i in rng.permutation(len(val_pool))[:num_test]]
    if len(train) < num_train:
        notes.append(
            f"train has {len(train)} of {num_train} examples (training split: {len(train_pool)} rows)"
        )
    if len(test) < num_test:
        notes.append(f"test has {len(test)} of {num_test} examples (validation split: {len(val_pool)} rows)")
    return train, dev, test, heldout, notes
