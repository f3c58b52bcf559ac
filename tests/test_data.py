import hashlib
import http.server
import threading
from functools import partial

import pytest

from conftest import FIXTURES, shared_file
from dot.data import generated_lines, load_split
from dot.data.__main__ import main as data_cli
from dot.data.fetch import DownloadError, Upstream, download
from dot.data.readers import DataFormatError, read_dot_jsonl, read_dot_text
from dot.tasks import get_task
from dot.tasks.multiplication import parse_operands


@pytest.mark.parametrize("folder,task,count", [("4x4", "4by4", 1000), ("5x5", "5by5", 1000),
                                               ("gsm8k", "gsm8k", 500)])
def test_shared_valid_files_load_with_right_counts(folder, task, count):
    examples = read_dot_text(shared_file(folder, "valid.txt"), get_task(task))
    assert len(examples) == count
    assert [e.task_id for e in examples] == list(range(count))


def test_gsm8k_reader_keeps_unicode_line_separator(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("a\u2028b?||<<1+1=2>> #### 2\nc?|| #### 3\n", encoding="utf-8")
    examples = read_dot_text(path, get_task("gsm8k"))
    assert [e.source for e in examples] == ["a\u2028b?", "c?"]


@pytest.mark.parametrize("line,message", [
    ("no separator #### 2", "exactly one '||'"),
    ("a||b||<<1=1>> #### 1", "exactly one '||'"),
    ("q||<<1=1>> 1", "exactly one '####'"),
    ("q||<<1=1>> #### ", "empty answer"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(f"ok?||<<1+1=2>> #### 2\n{line}\n")
    with pytest.raises(DataFormatError, match=f"{path}:2: .*{message}"):
        read_dot_text(path, get_task("gsm8k"))


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataFormatError, match="empty"):
        read_dot_text(tmp_path / "empty.txt", get_task("gsm8k"))
    with pytest.raises(FileNotFoundError, match="python -m dot.data fetch"):
        read_dot_text(tmp_path / "missing.txt", get_task("gsm8k"))


def test_jsonl_reader_matches_text_reader(tmp_path):
    task = get_task("gsm8k")
    text = read_dot_text(FIXTURES / "gsm8k_small.txt", task)
    rows = []
    import json
    for e in text:
        rationale, answer = e.target.split("####")
        rows.append(json.dumps({"src": e.source.strip(), "rationales": rationale.strip(),
                                "trg": answer.strip()}))
    (tmp_path / "g.jsonl").write_text("\n".join(rows) + "\n")
    from_json = read_dot_jsonl(tmp_path / "g.jsonl", task)
    assert [e.thoughts for e in from_json] == [e.thoughts for e in text]
    (tmp_path / "bad.jsonl").write_text('{"src": "q"}\n')
    with pytest.raises(DataFormatError, match="bad.jsonl:1"):
        read_dot_jsonl(tmp_path / "bad.jsonl", task)


def test_generated_splits_are_deterministic_and_disjoint(tmp_path):
    task = get_task("mult3x3")
    train = generated_lines(task, "train", 5000, seed=7, root=tmp_path)
    assert train == generated_lines(task, "train", 5000, seed=7, root=tmp_path)
    assert train != generated_lines(task, "train", 5000, seed=8, root=tmp_path)
    def pairs(lines):
        return {parse_operands(line.split("||")[0]) for line in lines}
    held_out = pairs(generated_lines(task, "valid", 0, 0, tmp_path)) | pairs(
        generated_lines(task, "test", 0, 0, tmp_path))
    assert len(pairs(train)) == 5000 and not pairs(train) & held_out


def test_generated_4x4_training_excludes_real_valid_pairs(tmp_path):
    task = get_task("4by4")
    valid, source = load_split(task, "valid")
    assert "valid.txt" in source
    train = generated_lines(task, "train", 20000, seed=0)
    overlap = {parse_operands(line.split("||")[0]) for line in train} & {parse_operands(e.source) for e in valid}
    assert not overlap


def test_make_mult_cli_writes_file(tmp_path, capsys):
    assert data_cli(["make-mult", "--digits", "2x3", "--n", "50", "--root", str(tmp_path)]) == 0
    lines = (tmp_path / "mult2x3" / "train.txt").read_text().split("\n")
    assert len(lines) == 51 and lines[-1] == ""
    examples = read_dot_text(tmp_path / "mult2x3" / "train.txt", get_task("mult2x3"))
    a, b = parse_operands(examples[0].source)
    assert 10 <= a < 100 and 100 <= b < 1000


@pytest.mark.parametrize("argv, message", [
    (["make-mult", "--digits", "abc"], "--digits abc: unknown task 'abc'"),
    (["make-mult", "--digits", "gsm8k"], "not a multiplication size"),
])
def test_data_cli_names_a_bad_task(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        data_cli([*argv, "--root", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("n", ["0", "-5"])
def test_make_mult_refuses_a_non_positive_count_and_writes_nothing(tmp_path, capsys, n):
    with pytest.raises(SystemExit) as exit_info:
        data_cli(["make-mult", "--digits", "2x3", "--n", n, "--root", str(tmp_path)])
    assert exit_info.value.code == 2 and "--n must be >= 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _spec_for(content: bytes, path: str = "data/x/valid.txt") -> Upstream:
    return Upstream("valid", path, len(content), hashlib.sha256(content).hexdigest())


def test_download_verifies_and_writes_atomically(http_root, tmp_path):
    www, url = http_root
    content = b"q||<<1+1=2>> #### 2\n" * 100
    (www / "data/x").mkdir(parents=True)
    (www / "data/x/valid.txt").write_bytes(content)
    dest = tmp_path / "out" / "valid.txt"
    assert download(_spec_for(content), dest, mirror=url, progress=False).read_bytes() == content
    # A mismatching checksum leaves nothing behind.
    bad = Upstream("valid", "data/x/valid.txt", len(content), "0" * 64)
    with pytest.raises(DownloadError, match="sha256"):
        download(bad, tmp_path / "other" / "valid.txt", mirror=url, progress=False)
    assert list((tmp_path / "other").iterdir()) == []


def test_download_rejects_lfs_pointer(http_root, tmp_path):
    www, url = http_root
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 106656000\n"
    (www / "data/x").mkdir(parents=True)
    (www / "data/x/train.txt").write_bytes(pointer)
    spec = Upstream("train", "data/x/train.txt", 106656000, "9" * 64, lfs=True)
    with pytest.raises(DownloadError, match="Git LFS pointer"):
        download(spec, tmp_path / "train.txt", mirror=url, progress=False)
    assert not (tmp_path / "train.txt").exists()


def test_fetch_cli_against_local_mirror(http_root, tmp_path):
    """The real upstream checksums, served by a local mirror holding the shared copies."""
    www, url = http_root
    src = shared_file("4x4", "valid.txt")
    (www / "data/4_by_4_mult").mkdir(parents=True)
    (www / "data/4_by_4_mult/valid.txt").write_bytes(src.read_bytes())
    root = tmp_path / "data"
    assert data_cli(["fetch", "4x4", "--splits", "valid", "--root", str(root), "--mirror", url]) == 0
    assert (root / "4by4" / "valid.txt").read_bytes() == src.read_bytes()
    assert data_cli(["fetch", "4x4", "--splits", "test", "--root", str(root), "--mirror", url]) == 1


def test_published_tasks_never_evaluate_on_generated_splits(tmp_path):
    """4by4 has a real test split upstream: without the file, loading it fails (callers then
    fall back to the real valid split) instead of silently generating one."""
    with pytest.raises(FileNotFoundError, match="fetch 4by4"):
        load_split(get_task("4by4"), "test", root=tmp_path)
    examples, source = load_split(get_task("mult4x3"), "test", root=tmp_path)
    assert source.startswith("generated") and len(examples) == 1000


def test_missing_test_split_falls_back_to_valid_and_says_so(tmp_path):
    from dot.data import load_eval_split

    valid = shared_file("4x4", "valid.txt")
    examples, source = load_eval_split(get_task("4by4"), "test", root=tmp_path)
    assert len(examples) == 1000 and source == f"{valid} (no test split found; using valid)"
    with pytest.raises(FileNotFoundError):  # an explicit path never falls back
        load_eval_split(get_task("4by4"), "test", tmp_path / "absent.txt", root=tmp_path)
