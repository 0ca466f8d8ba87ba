"""The README's Python quickstart runs as written (one epoch instead of ten, in a temporary directory)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_code() -> str:
    text = README.read_text()
    section = text[text.index("## Python quickstart") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quickstart_runs(tmp_path, monkeypatch, capsys):
    code = quickstart_code()
    assert "epochs=10" in code and '"runs/data/demo-py"' in code
    code = code.replace("epochs=10", "epochs=1").replace('"runs/data/demo-py"', repr(str(tmp_path / "demo")))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    item_ids = namespace["item_ids"]
    assert item_ids.shape[1] == 10 and 1 <= item_ids.shape[0] <= 1024  # one validation batch, its top 10
    assert namespace["prepared"].split_records("test") == 3000  # the demo preset's users
    out = capsys.readouterr().out
    assert out.count("'ndcg@20'") == 2  # the two evaluate_model results were printed
