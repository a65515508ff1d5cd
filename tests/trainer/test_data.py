"""Pretraining text for PPO-ptx: a JSON-lines file, a text file's paragraphs, or a folder of both,
read in a stable order and only as far as needed."""

import json

from trainer.data import read_texts


def test_pretraining_text_from_a_folder_of_jsonl_and_txt_files(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "books").mkdir(parents=True)
    (corpus / "a.txt").write_text("The first paragraph\nruns on.\n\n\nThe second one.\n")
    (corpus / "books" / "b.jsonl").write_text(
        "\n".join(json.dumps({"text": t}) for t in ("one record", "another record")) + "\n\n"
    )
    (corpus / "weights.bin").write_bytes(b"\x80\x04not text")  # neither kind: not read
    expected = ["The first paragraph\nruns on.", "The second one.", "one record", "another record"]
    assert read_texts(corpus) == expected
    assert read_texts(corpus, limit=3) == expected[:3]
    assert read_texts(corpus / "books" / "b.jsonl") == expected[2:]
