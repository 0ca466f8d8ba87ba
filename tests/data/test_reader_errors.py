"""Mistakes in raw data files: each raises DataError naming the file, the line and the offending value."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tfsidefuse.cli import main
from tfsidefuse.data import read_recbole, read_s3rec
from tfsidefuse.errors import DataError

# ---------------------------------------------------------------------------------------------------------------------
# S3-Rec: sequences.txt and item_attributes.json
# ---------------------------------------------------------------------------------------------------------------------


def _s3rec(tmp_path: Path, sequences: str | bytes, attributes: object = None) -> Path:
    """Writes an S3-Rec dataset directory; ``attributes`` is JSON text, bytes or an object to dump."""
    root = tmp_path / "toy-s3rec"
    root.mkdir(parents=True, exist_ok=True)
    if attributes is None:
        attributes = {"2": [1], "3": [2]}
    if not isinstance(attributes, (str, bytes)):
        attributes = json.dumps(attributes)
    for name, content in (("sequences.txt", sequences), ("item_attributes.json", attributes)):
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


@pytest.mark.parametrize(
    ("sequences", "pattern"),
    [
        ("1 5 x 7\n", r"sequences\.txt:1: item ids must be positive integers, got 'x' \(token 3 of the line\)"),
        ("1 2 3\n2 4 5.0\n", r"sequences\.txt:2: item ids must be positive integers, got '5\.0'"),
        ("1 2 3\n2 4 -5\n", r"sequences\.txt:2: item ids must be positive integers, got '-5'"),
        ("u1 5 x 7\n", r"sequences\.txt:1: user ids must be non-negative integers, got 'u1'"),
    ],
)
def test_s3rec_non_integer_id(tmp_path: Path, sequences: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        read_s3rec(_s3rec(tmp_path, sequences))


@pytest.mark.parametrize(("token", "position"), [("0", 3), ("000", 3)])
def test_s3rec_item_id_zero_in_sequences(tmp_path: Path, token: str, position: int) -> None:
    root = _s3rec(tmp_path, f"1 2 3\n2 4 {token} 3\n")
    with pytest.raises(
        DataError,
        match=rf"sequences\.txt:2: item id '{token}' \(token {position} of the line\): "
        r"item ids in the S3-Rec format start at 1 \(0 is padding\)",
    ):
        read_s3rec(root)


def test_s3rec_user_id_zero_is_a_user(tmp_path: Path) -> None:
    raw = read_s3rec(_s3rec(tmp_path, "0 2 3\n"))
    assert raw.interactions["user"].tolist() == ["0", "0"]


def test_s3rec_item_id_zero_in_attributes(tmp_path: Path) -> None:
    root = _s3rec(tmp_path, "1 2 3\n", '{\n"2": [1],\n"0": [4]\n}')
    with pytest.raises(
        DataError, match=r"item_attributes\.json:3: item id '0': item ids in the S3-Rec format start at 1"
    ):
        read_s3rec(root)


@pytest.mark.parametrize(
    ("attributes", "pattern"),
    [
        ("hello", r"item_attributes\.json:1: invalid JSON \(Expecting value\) at column 1, near 'hello'"),
        ('{\n"2": [1],\n"3": [2]]\n}', r"item_attributes\.json:3: invalid JSON .* at column 9, near '\]'"),
        ('{"2": [1],', r"item_attributes\.json:1: invalid JSON .*at the end of the file"),
        ("", r"item_attributes\.json:1: invalid JSON"),
    ],
)
def test_s3rec_attributes_not_json(tmp_path: Path, attributes: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        read_s3rec(_s3rec(tmp_path, "1 2 3\n", attributes))


@pytest.mark.parametrize(
    ("attributes", "pattern"),
    [
        ("[[1, 2]]", r"item_attributes\.json:1: expected a JSON object.*got list '\[\[1, 2\]\]'"),
        ('"2: 1"', r"item_attributes\.json:1: expected a JSON object.*got str '2: 1'"),
        ('{\n"2": [1],\n"3": 4\n}', r"item_attributes\.json:3: item '3': expected a list of attribute ids, got 4"),
        ('{\n"2": {"a": 1}\n}', r"item_attributes\.json:2: item '2': expected a list.*got \{'a': 1\}"),
        ('{\n"2": [1, "a"]\n}', r"item_attributes\.json:2: item '2': attribute ids must be integers, got 'a'"),
        ('{\n"2": [[1]]\n}', r"item_attributes\.json:2: item '2': attribute ids must be integers, got \[1\]"),
        ('{\n"x": [1]\n}', r"item_attributes\.json:2: item ids must be non-negative integers, got key 'x'"),
        ('{\n"2": [1],\n"02": [2]\n}', r"item_attributes\.json:3: item '02' is listed twice"),
        ('{\n"2": [1],\n"3": [2],\n"2": [3]\n}', r"item_attributes\.json:4: item '2' is listed twice"),
    ],
)
def test_s3rec_attributes_of_the_wrong_shape(tmp_path: Path, attributes: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        read_s3rec(_s3rec(tmp_path, "1 2 3\n", attributes))


@pytest.mark.parametrize("sequences", ["", "\n\n  \n"])
def test_s3rec_empty_sequences_file(tmp_path: Path, sequences: str) -> None:
    with pytest.raises(DataError, match=r"sequences\.txt:1: empty file, expected one line 'user_id item_id"):
        read_s3rec(_s3rec(tmp_path, sequences))


def test_s3rec_user_line_without_items(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"sequences\.txt:2: user '7' has no items.*got '7'"):
        read_s3rec(_s3rec(tmp_path, "1 2 3\n7\n2 3\n"))


def test_s3rec_blank_line_between_users(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"sequences\.txt:2: blank line; expected 'user_id item_id"):
        read_s3rec(_s3rec(tmp_path, "1 2 3\n \n2 3\n"))


def test_s3rec_repeated_user(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"sequences\.txt:3: user '1' already appears on line 1"):
        read_s3rec(_s3rec(tmp_path, "1 2 3\n2 3\n1 3\n"))


@pytest.mark.parametrize(
    ("sequences", "attributes", "pattern"),
    [
        (b"1 2 3\n2 \xff 4\n", None, r"sequences\.txt:2: not UTF-8 text: byte\(s\) b'\\xff' at column 3"),
        (b"1 2 3\n", b'{"2": [1],\n "3": "\xe9"}', r"item_attributes\.json:2: not UTF-8 text: .*b'\\xe9'"),
    ],
)
def test_s3rec_not_utf8(tmp_path: Path, sequences: bytes, attributes: bytes | None, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        read_s3rec(_s3rec(tmp_path, sequences, attributes))


def test_s3rec_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    bom = "\ufeff".encode()
    raw = read_s3rec(_s3rec(tmp_path, bom + b"1 2 3\n", bom + b'{"2": [1], "3": [2]}'))
    assert raw.interactions.to_dict("list") == {"user": ["1", "1"], "item": ["2", "3"]}


# ---------------------------------------------------------------------------------------------------------------------
# RecBole atomic files
# ---------------------------------------------------------------------------------------------------------------------


def _recbole(tmp_path: Path, inter: str, item: str | None = None) -> Path:
    """Writes ``toy/toy.inter`` (and ``toy/toy.item`` when given)."""
    root = tmp_path / "toy"
    root.mkdir(parents=True, exist_ok=True)
    (root / "toy.inter").write_text(inter, encoding="utf-8")
    if item is not None:
        (root / "toy.item").write_text(item, encoding="utf-8")
    return root


_HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


@pytest.mark.parametrize(
    ("header", "pattern"),
    [
        (
            "user_id:token\titem_id\ttimestamp:float",
            r"toy\.inter:1: header entries must be 'field:type', got 'item_id'",
        ),
        ("user_id:token\t:token\ttimestamp:float", r"toy\.inter:1: header entries must be 'field:type', got ':token'"),
        ("user_id:token\titem_id:token\t", r"toy\.inter:1: header entries must be 'field:type', got ''"),
        (
            "user_id:token\titem_id:int\ttimestamp:float",
            r"toy\.inter:1: unknown type 'int' in header entry 'item_id:int'; known types: \['token'",
        ),
        ("user_id:token\titem_id:\ttimestamp:float", r"toy\.inter:1: unknown type '' in header entry 'item_id:'"),
        ("user_id:token\titem_id:token\tuser_id:float", r"toy\.inter:1: duplicate field 'user_id' in the header"),
    ],
)
def test_recbole_bad_header_entry(tmp_path: Path, header: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        read_recbole(_recbole(tmp_path, header + "\n1\t2\t3\n"))


@pytest.mark.parametrize(
    "header",
    [
        "user_id:token item_id:token timestamp:float",
        "user_id:token  item_id:token",
        "user_id:token item_id:token\ttimestamp:float",
    ],
)
def test_recbole_header_separated_by_spaces(tmp_path: Path, header: str) -> None:
    spaced = header.split("\t")[0]
    with pytest.raises(
        DataError,
        match=r"toy\.inter:1: the header fields must be separated by tabs, found spaces: " + re.escape(repr(spaced)),
    ):
        read_recbole(_recbole(tmp_path, header + "\n1 2 3\n"))


def test_recbole_header_field_name_with_a_space_is_a_field(tmp_path: Path) -> None:
    raw = read_recbole(_recbole(tmp_path, "user_id:token\titem_id:token\tmy device:token\n1\t2\tweb\n"), time_gap=False)
    assert raw.interactions["my_device"].tolist() == ["web"]


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        (
            "1\t2\t3\n1\t4\n",
            r"toy\.inter:3: expected 3 tab-separated fields \['user_id', 'item_id', 'timestamp'\], "
            r"got 2: '1\\t4'$",
        ),
        ("1\t2\t3\n1\t4\t5\t6\n", r"toy\.inter:3: expected 3 tab-separated fields .*got 4: '1\\t4\\t5\\t6'$"),
        ("1\t2\t3\n\n1\t4\t5\n", r"toy\.inter:3: expected 3 tab-separated fields .*got 1: ''$"),
        (
            "1\t2\t3\n1 4 5\n",
            r"toy\.inter:3: expected 3 .*got 1: '1 4 5' \(the fields must be separated by tabs, found spaces\)",
        ),
    ],
)
def test_recbole_wrong_number_of_columns(tmp_path: Path, rows: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        read_recbole(_recbole(tmp_path, _HEADER + rows))


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        ("1\t2\t3\n\t4\t5\n", r"toy\.inter:3: empty 'user_id' \(field 1 of '\\t4\\t5'\); the field is required"),
        ("1\t2\t3\n1\t \t5\n", r"toy\.inter:3: empty 'item_id' \(field 2 of '1\\t \\t5'\)"),
        ("1\t2\t3\n1\t4\t5\n1\t6\t\n", r"toy\.inter:4: empty 'timestamp' \(field 3 of '1\\t6\\t'\)"),
    ],
)
def test_recbole_empty_required_field(tmp_path: Path, rows: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        read_recbole(_recbole(tmp_path, _HEADER + rows))


def test_recbole_empty_item_id_in_item_file(tmp_path: Path) -> None:
    root = _recbole(tmp_path, _HEADER + "1\t2\t3\n", item="item_id:token\tyear:token\n2\t1995\n\t1996\n")
    with pytest.raises(DataError, match=r"toy\.item:3: empty 'item_id' \(field 1 of '\\t1996'\)"):
        read_recbole(root)


@pytest.mark.parametrize(
    ("inter", "item", "pattern"),
    [
        (
            _HEADER + "1\t2\t3\n1\t4\tnoon\n",
            None,
            r"toy\.inter:3: field 'timestamp' \(float\) must be a number, got 'noon'",
        ),
        (
            "user_id:token\titem_id:token\tr:float\n1\t2\t3\n1\t4\t4,5\n",
            None,
            r"toy\.inter:3: field 'r' \(float\) must be a number, got '4,5'",
        ),
        (
            _HEADER + "1\t2\t3\n",
            "item_id:token\tscore:float\n2\t1.5\n3\thigh\n",
            r"toy\.item:3: field 'score' \(float\) must be a number, got 'high'",
        ),
    ],
)
def test_recbole_non_numeric_float(tmp_path: Path, inter: str, item: str | None, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        read_recbole(_recbole(tmp_path, inter, item))


@pytest.mark.parametrize(
    ("inter", "pattern"),
    [
        ("", r"toy\.inter:1: empty file, expected a header"),
        ("uid:token\titem_id:token\n1\t2\n", r"toy\.inter:1: the header lacks the field 'user_id'; fields are \['uid'"),
    ],
)
def test_recbole_empty_file_or_missing_field(tmp_path: Path, inter: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        read_recbole(_recbole(tmp_path, inter))


def test_recbole_bad_reader_arguments(tmp_path: Path) -> None:
    root = _recbole(tmp_path, "user_id:token\titem_id:token\tdevice:token\ttags:token_seq\n1\t2\tweb\ta b\n")
    with pytest.raises(DataError, match=r"toy\.inter: unknown interaction feature column\(s\) \['colour'\]"):
        read_recbole(root, interaction_features=["colour"])
    with pytest.raises(DataError, match=r"toy\.inter: field 'tags' has type token_seq"):
        read_recbole(root, interaction_features=["tags"])
    with pytest.raises(DataError, match=r"toy\.item: file not found, but item features \['genre'\]"):
        read_recbole(root, item_features=["genre"])


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def test_cli_prepare_reports_a_broken_sequences_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _s3rec(tmp_path, "1 2 3 4\n2 3 x 4\n")
    prepared = tmp_path / "prepared"
    config = {
        "dataset": {"source": "s3rec", "path": str(root), "prepared_dir": str(prepared), "max_len": 20},
        "model": {
            "name": "sasrec",
            "hidden_dim": 64,
            "num_layers": 2,
            "num_heads": 2,
            "ff_dim": 128,
            "dropout": 0.2,
            "attention_dropout": 0.2,
        },
        "training": {
            "run_dir": str(tmp_path / "run"),
            "epochs": 30,
            "batch_size": 128,
            "learning_rate": 2.0e-3,
            "eval_every": 2,
            "monitor": "ndcg@20",
            "patience": 3,
            "verbose": 2,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")

    assert main(["prepare", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    err_lines = captured.err.strip().splitlines()
    assert err_lines[-1] == (
        f"tfsidefuse prepare: error: {root / 'sequences.txt'}:2: item ids must be positive integers, "
        f"got 'x' (token 3 of the line)"
    )
    assert "Traceback" not in captured.err
    assert not prepared.exists()
    assert not (tmp_path / "run").exists()
