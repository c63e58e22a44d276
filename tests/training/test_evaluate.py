"""`python -m training evaluate` on tiny exported models and tiny data: the figures match an
independent torch computation, and land in the manifest with backend, rows and data hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from tokenizers import Tokenizer

from inference.squad_metric import squad_scores
from tests.training.tiny_models import save_tiny
from training.cli import main
from training.evaluate import read_predictions
from training.export import export_model

SENTENCES = [
    ("a very good film", 1), ("the worst movie", 0), ("boring and dull", 0), ("funny and great fun", 1),
    ("the plot is not good", 0), ("i love the actor", 1), ("too long and too dull", 0), ("the best story", 1),
    ("what a bad day", 0), ("a great city for people", 1), ("really boring plot", 0), ("good music", 1),
]
PAIRS = [
    ("a man plays guitar", "a man is playing music", 4.2), ("a dog runs", "a cat sleeps", 1.0),
    ("paris is the capital of france", "the capital of france is paris", 5.0), ("the fox jumps", "a lazy dog", 0.4),
    ("people live in the city", "many people in a big city", 3.1), ("good film", "bad movie", 1.7),
    ("one year", "two years", 2.2), ("the quick brown fox", "a quick brown fox jumps", 3.8),
]


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = save_tiny(tmp_path_factory.mktemp("eval"), "bert", "classification", seed=3)
    export_model(folder, int8=False)
    return folder


def _torch_predictions(folder: Path, texts: list[str]) -> list[int]:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    preds = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok.encode(text).ids])
            preds.append(int(model(input_ids=ids).logits.argmax(-1)))
    return preds


def test_accuracy_matches_torch_and_is_recorded(classifier: Path, tmp_path: Path) -> None:
    data = tmp_path / "tiny" / "dev.tsv"
    data.parent.mkdir()
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in SENTENCES))
    assert main(["evaluate", str(classifier), "--backend", "onnx", "--data", str(data)]) == 0
    entry = _manifest(classifier)["quality"]["tiny-dev"]["onnx"]
    preds = _torch_predictions(classifier, [t for t, _ in SENTENCES])
    expected = np.mean([p == y for p, (_, y) in zip(preds, SENTENCES, strict=False)])
    assert entry["accuracy"] == pytest.approx(expected)
    assert (entry["backend"], entry["rows"], entry["dataset"]) == ("onnx", len(SENTENCES), "classification")
    assert entry["data"]["sha256"] == _sha256(data)
    assert entry["throughput_items_s"] > 0
    assert entry["throughput_tokens_s"] > entry["throughput_items_s"]


def test_label_names_map_through_the_model_labels(classifier: Path, tmp_path: Path) -> None:
    names = {0: "negative", 1: "positive"}
    rows = [{"text": t, "label": names[y]} for t, y in SENTENCES]
    data = tmp_path / "named.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["evaluate", str(classifier), "--backend", "torch", "--data", str(data), "--name", "named",
                 "--limit", "10"]) == 0
    entry = _manifest(classifier)["quality"]["named"]["torch"]
    preds = _torch_predictions(classifier, [t for t, _ in SENTENCES[:10]])
    assert entry["rows"] == 10
    assert entry["accuracy"] == pytest.approx(np.mean([p == y for p, (_, y) in zip(preds, SENTENCES, strict=False)]))


def test_unknown_label_is_a_clear_error(classifier: Path, tmp_path: Path, caplog) -> None:
    data = tmp_path / "bad.tsv"
    data.write_text("sentence\tlabel\ngood film\t1\nbad film\tmaybe\n")
    assert main(["evaluate", str(classifier), "--backend", "onnx", "--data", str(data)]) == 2
    assert f"{data}:3: unknown label 'maybe'" in caplog.text


def test_stsb_spearman_matches_torch(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path, "mpnet", "embedding", seed=5)
    data = tmp_path / "stsb" / "dev.tsv"
    data.parent.mkdir()
    data.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS))
    assert main(["evaluate", str(folder), "--backend", "torch", "--data", str(data)]) == 0
    entry = _manifest(folder)["quality"]["stsb-dev"]["torch"]
    from transformers import AutoModel

    model, tok = AutoModel.from_pretrained(str(folder)).eval(), Tokenizer.from_file(str(folder / "tokenizer.json"))
    with torch.no_grad():
        def vec(text: str) -> np.ndarray:
            v = model(input_ids=torch.tensor([tok.encode(text).ids])).last_hidden_state[0].mean(0).numpy()
            return v / np.linalg.norm(v)
        cosines = [float(vec(a) @ vec(b)) for a, b, _ in PAIRS]
    assert entry["spearman"] == pytest.approx(spearmanr(cosines, [s for *_, s in PAIRS]).statistic, abs=1e-9)
    assert entry["rows"] == len(PAIRS)
    assert entry["dataset"] == "stsb"


SQUAD_ARTICLES = [
    ("a0", "paris is the capital of france and a big city", [("what is the capital of france", "paris")]),
    ("a1", "penguins live in antarctica in the southern hemisphere",
     [("where do penguins live", "antarctica"), ("which hemisphere", "southern hemisphere")]),
    ("a2", "the quick brown fox jumps over the lazy dog at night", [("what jumps", "quick brown fox")]),
]


def _squad(path: Path, articles: list[tuple[str, str, list[tuple[str, str]]]] = SQUAD_ARTICLES) -> Path:
    def article(title: str, context: str, qas: list[tuple[str, str]]) -> dict:
        return {"title": title, "paragraphs": [{"context": context, "qas": [
            {"id": f"{title}-{i}", "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
            for i, (q, a) in enumerate(qas)]}]}

    path.write_text(json.dumps({"version": "1.1", "data": [article(*a) for a in articles]}))
    return path


def _answers_one_by_one(folder: Path, backend: str, questions: list[tuple[str, str]]) -> list[str]:
    """Each question's best answer on its own (one model call per question, no batching, no
    evaluation loop): the reference evaluate's batched figures must reproduce."""
    from inference.backends import load_backend
    from inference.modelfolder import read_spec
    from inference.pipelines import QAItem, make_pipeline
    from inference.tasks import pad_batch

    pipeline, pad = make_pipeline(read_spec(folder))
    model = load_backend(folder, "qa", backend, threads=1)
    answers = []
    for question, context in questions:
        item = QAItem(0, question, context)
        (windows,) = pipeline.encode([item])
        inputs = pad_batch(windows, pad)
        outputs = pipeline.reduce(model.forward(inputs), inputs)
        rows = [{k: v[i] for k, v in outputs.items()} for i in range(len(windows))]
        answers.append(pipeline.finish(item, windows, rows)["result"][0]["answer"])
    return answers


def test_squad_articles_backends_agree(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path, "bert", "qa", seed=7)
    export_model(folder, int8=False)
    data = _squad(tmp_path / "squad.json")
    chosen = SQUAD_ARTICLES[1:3]
    questions = [(q, context) for _, context, qas in chosen for q, _ in qas]
    golds = [[a] for _, _, qas in chosen for _, a in qas]
    # per item, torch and ONNX give the same answer (a broken export or backend would not)
    predicted = _answers_one_by_one(folder, "torch", questions)
    assert _answers_one_by_one(folder, "onnx", questions) == predicted
    assert all(predicted), predicted
    expected = squad_scores(list(zip(predicted, golds, strict=True)))
    for backend in ("torch", "onnx"):
        assert main(["evaluate", str(folder), "--backend", backend, "--data", str(data), "--articles", "1:3"]) == 0
        # evaluate's own per-item records: batched, the answers one by one
        assert [r["prediction"] for r in read_predictions(folder, "squad-articles-1-3", backend)] == predicted
    results = _manifest(folder)["quality"]["squad-articles-1-3"]
    torch_entry, onnx_entry = results["torch"], results["onnx"]
    assert torch_entry["rows"] == 3
    assert torch_entry["articles"] == [1, 3]
    assert onnx_entry["backend"] == "onnx"
    for entry in (torch_entry, onnx_entry):  # evaluate's batched figures are those of the answers one by one
        assert entry["exact_match"] == pytest.approx(expected["exact_match"])
        assert entry["f1"] == pytest.approx(expected["f1"])


def test_squad_known_answers_score_100_and_a_wrong_one_counts(tmp_path: Path) -> None:
    """Gold answers set to what the model answers: EM = F1 = 100 on both backends; one question
    whose gold shares no word with the model's answer: EM loses exactly that question."""
    folder = save_tiny(tmp_path, "bert", "qa", seed=7)
    export_model(folder, int8=False)
    questions = [(q, context) for _, context, qas in SQUAD_ARTICLES for q, _ in qas]
    predicted = _answers_one_by_one(folder, "torch", questions)
    assert all(predicted), predicted
    known, at = [], 0
    for title, context, qas in SQUAD_ARTICLES:
        known.append((title, context, [(q, predicted[at + i]) for i, (q, _) in enumerate(qas)]))
        at += len(qas)
    first_words = set(predicted[0].split())
    wrong = next(w for w in SQUAD_ARTICLES[0][1].split() if w not in first_words | {"a", "an", "the"})
    mixed = [(known[0][0], known[0][1], [(known[0][2][0][0], wrong)]), *known[1:]]
    for name, articles, exact_match, f1 in (
        ("known", known, 100.0, 100.0), ("mixed", mixed, 100.0 * 3 / 4, 100.0 * 3 / 4),
    ):
        data = _squad(tmp_path / f"{name}.json", articles)
        for backend in ("torch", "onnx"):
            assert main(["evaluate", str(folder), "--backend", backend, "--data", str(data), "--name", name]) == 0
            entry = _manifest(folder)["quality"][name][backend]
            assert entry["rows"] == 4
            assert (entry["exact_match"], entry["f1"]) == (pytest.approx(exact_match), pytest.approx(f1)), backend
