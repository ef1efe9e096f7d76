"""Reading files, label normalisation, the sampling protocol and error messages."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from zojax.tasks import TASKS, DataFormatError, get_task, load_task, read_file
from zojax.tasks.registry import label_index

# (task, file, examples, label counts; None = unlabelled)
SHARED_FILES = [
    ("sst2", "SST-2/train_full.tsv", 67349, {0: 29780, 1: 37569}),
    ("sst2", "SST-2/dev.tsv", 872, {0: 428, 1: 444}),
    ("sst2", "SST-2/test.tsv", 1821, {None: 1821}),
    ("rte", "RTE/train.jsonl", 2490, {0: 1249, 1: 1241}),
    ("rte", "RTE/val.jsonl", 277, {0: 146, 1: 131}),
    ("rte", "RTE/test.jsonl", 3000, {None: 3000}),
    ("cb", "CB/train.jsonl", 250, {0: 115, 1: 119, 2: 16}),
    ("cb", "CB/val.jsonl", 56, {0: 23, 1: 28, 2: 5}),
    ("cb", "CB/test.jsonl", 250, {None: 250}),
    ("boolq", "BoolQ/val.jsonl", 3270, {0: 1237, 1: 2033}),
    ("boolq", "BoolQ/test.jsonl", 3245, {None: 3245}),
    ("copa", "COPA/train.jsonl", 400, {0: 195, 1: 205}),
    ("copa", "COPA/val.jsonl", 100, {0: 55, 1: 45}),
    ("copa", "COPA/test.jsonl", 500, {None: 500}),
    ("wsc", "WSC/train.jsonl", 554, {0: 295, 1: 259}),
    ("wsc", "WSC/val.jsonl", 104, {0: 66, 1: 38}),
    ("wsc", "WSC/test.jsonl", 146, {None: 146}),
    ("wic", "WiC/train.data.txt", 5428, {0: 2714, 1: 2714}),
    ("wic", "WiC/dev.data.txt", 638, {0: 319, 1: 319}),
    ("wic", "WiC/test.data.txt", 1400, {0: 700, 1: 700}),
    ("wic", "WiC/val.jsonl", 638, {0: 319, 1: 319}),
    ("wic", "WiC/test.jsonl", 1400, {None: 1400}),
    ("multirc", "MultiRC/train.jsonl", 27243, {0: 15218, 1: 12025}),
    ("multirc", "MultiRC/val.jsonl", 4848, {0: 2773, 1: 2075}),
    ("multirc", "MultiRC/test.jsonl", 9693, {None: 9693}),
    ("squad", "SQuAD/dev-v1.1.json", 10570, {0: 10570}),
]


@pytest.mark.parametrize("task, path, count, labels", SHARED_FILES, ids=[p for _, p, _, _ in SHARED_FILES])
def test_reads_every_shared_file(data_dir, task, path, count, labels):
    examples = read_file(task, data_dir / path)
    assert len(examples) == count
    assert Counter(ex.gold for ex in examples) == labels
    assert all(ex.gold is None or 0 <= ex.gold < len(ex.candidates) for ex in examples)


# Raw label value -> class index, checked row by row against the original files.
LABEL_MAPS = {
    "RTE/val.jsonl": ("rte", {"entailment": 0, "not_entailment": 1}),
    "CB/train.jsonl": ("cb", {"entailment": 0, "contradiction": 1, "neutral": 2}),
    "BoolQ/val.jsonl": ("boolq", {"false": 0, "true": 1}),
    "WSC/train.jsonl": ("wsc", {False: 0, True: 1}),
    "WiC/val.jsonl": ("wic", {"false": 0, "true": 1}),
    "COPA/train.jsonl": ("copa", {0: 0, 1: 1}),
}


@pytest.mark.parametrize("path", LABEL_MAPS)
def test_label_normalisation_follows_the_raw_labels(data_dir, path):
    task, mapping = LABEL_MAPS[path]
    raw = [json.loads(line)["label"] for line in (data_dir / path).read_text().splitlines()]
    assert [ex.gold for ex in read_file(task, data_dir / path)] == [mapping[v] for v in raw]


def test_wic_formats_agree(data_dir):
    """The authors' T/F labels and SuperGLUE's "true"/"false" give the same (word, label) pairs."""
    tsv = read_file("wic", data_dir / "WiC/dev.data.txt")
    jsonl = read_file("wic", data_dir / "WiC/val.jsonl")
    pairs = [Counter((ex.fields["word"], ex.gold) for ex in examples) for examples in (tsv, jsonl)]
    assert pairs[0] == pairs[1]


def test_label_index():
    assert label_index("Not_Entailment ", ("entailment", "not_entailment")) == 1
    assert label_index(True, ("false", "true")) == 1
    assert label_index("false", ("false", "true")) == 0
    assert label_index("1", ("negative", "positive")) == 1
    assert label_index(2, ("a", "b", "c")) == 2
    assert label_index(-1, ("a", "b")) is None and label_index(None, ("a", "b")) is None
    for bad, names in [("maybe", ("false", "true")), (2, ("false", "true")), (True, ("a", "b", "c"))]:
        with pytest.raises(ValueError, match="label"):
            label_index(bad, names)


# task -> (train, dev, test) sampled from the shared files with the default sizes
EXPECTED_SIZES = {
    "sst2": (1000, 500, 872),
    "rte": (1000, 500, 277),
    "cb": (150, 100, 56),
    "boolq": (1000, 500, 1000),
    "copa": (300, 100, 100),
    "wsc": (54, 500, 104),
    "wic": (1000, 500, 638),
    "multirc": (1000, 500, 1000),
    "squad": (1000, 500, 1000),
}


@pytest.mark.parametrize("name", EXPECTED_SIZES)
def test_protocol_sizes_and_disjointness(data_dir, name):
    data = load_task(name, data_dir)
    assert (len(data.train), len(data.dev), len(data.test)) == EXPECTED_SIZES[name]
    ids = [{id(ex) for ex in split} for split in (data.train, data.dev, data.test)]
    assert sum(map(len, ids)) == len(set().union(*ids))
    assert all(ex.gold is not None for split in (data.train, data.dev, data.test) for ex in split)
    if EXPECTED_SIZES[name][0] < 1000:
        assert any(note.startswith("train has") for note in data.notes)


def test_sampling_draws_dev_from_train_and_test_from_validation(data_dir):
    data = load_task("rte", data_dir, num_train=100, num_dev=50, num_test=20)
    train_contexts = {ex.context for ex in read_file("rte", data_dir / "RTE/train.jsonl")}
    assert all(ex.context in train_contexts for ex in data.train + data.dev)
    assert not any(ex.context in train_contexts for ex in data.test)
    assert (len(data.train), len(data.dev), len(data.test)) == (100, 50, 20)


def test_sampling_is_seeded(data_dir):
    def contexts(seed):
        data = load_task("cb", data_dir / "CB", seed=seed)
        return [[ex.context for ex in split] for split in (data.train, data.dev, data.test)]

    assert contexts(1) == contexts(1)
    assert contexts(1) != contexts(2)


def test_boolq_without_training_split_says_so(data_dir):
    data = load_task("boolq", data_dir)
    assert any("no training split" in note and "3270 validation rows" in note for note in data.notes)
    train, dev, test = ({ex.context for ex in split} for split in (data.train, data.dev, data.test))
    assert not (train & dev or train & test or dev & test)


def test_too_few_training_rows_for_dev(data_dir):
    with pytest.raises(ValueError, match="training split has 250 rows"):
        load_task("cb", data_dir, num_dev=500)


def test_tiny_sentiment_is_bundled_and_balanced():
    data = load_task("tiny_sentiment")
    assert (len(data.train), len(data.dev), len(data.test)) == (200, 60, 100)
    everything = data.train + data.dev + data.test
    assert len({ex.fields["sentence"] for ex in everything}) == 360
    assert Counter(ex.gold for ex in everything) == {0: 180, 1: 180}
    assert [ex.context for ex in data.test] == [ex.context for ex in load_task("tiny_sentiment").test]


def test_registry_names():
    names = "sst2 rte cb boolq wsc wic multirc copa record squad drop tiny_sentiment".split()
    assert list(TASKS) == names
    assert get_task("SST-2") is get_task("sst2") and get_task("BoolQ").name == "boolq"
    with pytest.raises(ValueError, match="unknown task 'mnli'.*sst2, rte"):
        get_task("mnli")


def _error(task, path, text):
    path.write_text(text)
    with pytest.raises(DataFormatError) as info:
        read_file(task, path)
    return str(info.value)


def test_malformed_rows_name_file_and_line(tmp_path):
    good = json.dumps({"premise": "p", "hypothesis": "h", "label": "entailment"})
    path = tmp_path / "val.jsonl"
    message = _error("rte", path, f"{good}\n{good}\n{{'premise': 1\n")
    assert message == f"{path}:3: invalid JSON (Expecting property name enclosed in double quotes)"
    message = _error("rte", path, f'{good}\n{{"premise": "p", "label": 0}}\n')
    assert message == f"{path}:2: missing field 'hypothesis'"
    message = _error("cb", path, '{"premise": "p", "hypothesis": "h", "label": "maybe"}\n')
    assert message.startswith(f"{path}:1: label 'maybe' is not one of")
    message = _error("boolq", path, '{"passage": 3, "question": "q", "label": true}\n')
    assert message == f"{path}:1: field 'passage' is int, expected text"

    tsv = tmp_path / "dev.tsv"
    assert _error("sst2", tsv, "sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n").startswith(
        f"{tsv}:3: 3 tab-separated fields, expected 2"
    )
    data, gold = tmp_path / "dev.data.txt", tmp_path / "dev.gold.txt"
    gold.write_text("T\nX\n")
    assert _error("wic", data, "go\tV\t0-0\tgo .\tgo !\nrun\tV\t0-0\trun .\trun !\n") == (
        f"{gold}:2: label 'X' is neither T nor F"
    )
    squad = tmp_path / "dev-v1.1.json"
    article = {"title": "T", "paragraphs": [{"qas": [{"question": "q", "answers": []}]}]}
    message = _error("squad", squad, json.dumps({"data": [article]}))
    assert message == f"{squad}: data[0].paragraphs[0]: missing field 'context'"


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"val\.jsonl"):
        load_task("rte", tmp_path)


def test_offline_hub_error_says_what_to_do():
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    code = (
        "from zojax.tasks import load_task, HubUnreachableError\n"
        "try:\n    load_task('rte')\nexcept HubUnreachableError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "hub is unreachable" in out.stdout and "pass data_dir=" in out.stdout, out.stderr


def test_hub_loading_without_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails as if absent
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'zojax\[hub\]', or pass data_dir="):
        load_task("rte")
