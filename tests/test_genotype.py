"""Genotype derivation from architecture logits, JSON I/O and validation."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
from tool_runs import DESIGN_PRIMITIVES

from ubnas_tf.genotype import (
    FORMAT,
    Genotype,
    GenotypeError,
    derive_cell,
    derive_genotype,
    edge_index,
    edge_weights,
    node_inputs,
    num_edges,
    random_genotype,
)

# Always passed explicitly: Genotype.validate(primitives=None) would import ubnas_tf.ops.
PRIMS = list(DESIGN_PRIMITIVES)
ALLOWED = [p for p in PRIMS if p != "none"]
OP = {name: k for k, name in enumerate(PRIMS)}


def _logits(choice: dict[tuple[int, int], str], steps: int = 4, op_logit: float = 5.0,
            edge_logit: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """alpha/beta where each (node, source) in `choice` has its op and its edge dominating."""
    alpha = np.zeros((num_edges(steps), len(PRIMS)))
    beta = np.zeros(num_edges(steps))
    for (node, source), op in choice.items():
        e = edge_index(node, source)
        alpha[e, OP[op]] = op_logit
        beta[e] = edge_logit
    return alpha, beta


NORMAL_CHOICE = {
    (0, 0): "bconv_3x3", (0, 1): "skip_connect",
    (1, 0): "bconv_5x5", (1, 2): "max_pool_3x3",
    (2, 1): "bdil_conv_3x3", (2, 3): "avg_pool_3x3",
    (3, 2): "bdil_conv_5x5", (3, 4): "bconv_3x3",
}
REDUCE_CHOICE = {
    (0, 0): "max_pool_3x3", (0, 1): "bconv_5x5",
    (1, 1): "avg_pool_3x3", (1, 2): "bconv_3x3",
    (2, 0): "skip_connect", (2, 2): "bdil_conv_5x5",
    (3, 1): "bconv_5x5", (3, 4): "bdil_conv_3x3",
}


def _expected_edges(choice: dict[tuple[int, int], str]) -> tuple[tuple[str, int], ...]:
    return tuple((choice[key], key[1]) for key in sorted(choice))


def _good_dict() -> dict:
    return {
        "format": FORMAT,
        "normal": [["bconv_3x3", 0], ["skip_connect", 1], ["bconv_5x5", 0], ["max_pool_3x3", 2],
                   ["bdil_conv_3x3", 1], ["avg_pool_3x3", 3], ["bdil_conv_5x5", 2], ["bconv_3x3", 4]],
        "normal_concat": [2, 3, 4, 5],
        "reduce": [["max_pool_3x3", 0], ["bconv_5x5", 1], ["avg_pool_3x3", 1], ["bconv_3x3", 2],
                   ["skip_connect", 0], ["bdil_conv_5x5", 2], ["bconv_5x5", 1], ["bdil_conv_3x3", 4]],
        "reduce_concat": [2, 3, 4, 5],
    }


def _good_genotype() -> Genotype:
    d = _good_dict()
    return Genotype(d["normal"], d["normal_concat"], d["reduce"], d["reduce_concat"])


# --------------------------------------------------------------------------------------------
# Edge indexing
# --------------------------------------------------------------------------------------------


def test_num_edges():
    assert num_edges(4) == 14
    assert num_edges() == 14
    assert num_edges(1) == 2
    assert num_edges(2) == 5
    assert num_edges(3) == 9
    assert num_edges(0) == 0


def test_edge_index_values():
    assert edge_index(0, 0) == 0
    assert edge_index(0, 1) == 1
    assert edge_index(1, 0) == 2
    assert edge_index(1, 2) == 4
    assert edge_index(2, 0) == 5
    assert edge_index(3, 0) == 9
    assert edge_index(3, 4) == 13


def test_edge_index_enumerates_all_edges_in_order():
    for steps in (1, 2, 3, 4, 5):
        indices = [edge_index(n, s) for n in range(steps) for s in range(n + 2)]
        assert indices == list(range(num_edges(steps)))


@pytest.mark.parametrize("node,source", [(0, 2), (0, 3), (1, 3), (3, 5), (2, -1)])
def test_edge_index_rejects_bad_source(node, source):
    with pytest.raises(ValueError, match=f"Node {node} has inputs 0..{node + 1}; got source {source}"):
        edge_index(node, source)


# --------------------------------------------------------------------------------------------
# Derivation
# --------------------------------------------------------------------------------------------


def test_derive_cell_known_choice():
    alpha, beta = _logits(NORMAL_CHOICE)
    assert derive_cell(alpha, beta, PRIMS) == _expected_edges(NORMAL_CHOICE)


def test_derive_cell_edges_listed_in_source_order_per_node():
    # Node 3 prefers source 4 more than source 2, but edges are listed by source index.
    choice = {(0, 1): "bconv_3x3", (0, 0): "bconv_5x5", (1, 2): "skip_connect",
              (1, 1): "max_pool_3x3", (2, 3): "avg_pool_3x3", (2, 0): "bconv_3x3",
              (3, 4): "bdil_conv_3x3", (3, 2): "bdil_conv_5x5"}
    alpha, beta = _logits(choice)
    beta[edge_index(3, 4)] = 6.0
    edges = derive_cell(alpha, beta, PRIMS)
    assert edges == _expected_edges(choice)
    for k in range(0, len(edges), 2):
        assert edges[k][1] < edges[k + 1][1]


def test_derive_genotype_known_choice():
    a_n, b_n = _logits(NORMAL_CHOICE)
    a_r, b_r = _logits(REDUCE_CHOICE)
    g = derive_genotype(a_n, b_n, a_r, b_r, PRIMS)
    assert g == _good_genotype()
    assert g.normal == _expected_edges(NORMAL_CHOICE)
    assert g.reduce == _expected_edges(REDUCE_CHOICE)
    assert g.normal_concat == (2, 3, 4, 5)
    assert g.reduce_concat == (2, 3, 4, 5)
    assert g.steps == 4
    assert g.validate(PRIMS) is g


def test_derive_cell_accepts_lists_and_float32():
    alpha, beta = _logits(NORMAL_CHOICE)
    expected = _expected_edges(NORMAL_CHOICE)
    assert derive_cell(alpha.astype(np.float32), beta.astype(np.float32), PRIMS) == expected
    assert derive_cell(alpha.tolist(), beta.tolist(), PRIMS) == expected


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_derive_genotype_other_step_counts(steps):
    choice = {}
    for node in range(steps):
        choice[(node, node)] = ALLOWED[node % len(ALLOWED)]
        choice[(node, node + 1)] = ALLOWED[(node + 3) % len(ALLOWED)]
    alpha, beta = _logits(choice, steps=steps)
    g = derive_genotype(alpha, beta, alpha, beta, PRIMS, steps=steps)
    assert g.normal == _expected_edges(choice)
    assert g.normal_concat == tuple(range(2, steps + 2))
    assert g.steps == steps
    g.validate(PRIMS)


def test_none_never_chosen_even_when_it_dominates_everywhere():
    alpha, beta = _logits(NORMAL_CHOICE, op_logit=2.0)
    alpha[:, OP["none"]] = 50.0  # 'none' is by far the strongest op on every edge
    edges = derive_cell(alpha, beta, PRIMS)
    assert all(op != "none" for op, _ in edges)
    # The best non-'none' op is still picked, and the edge choice follows beta.
    assert edges == _expected_edges(NORMAL_CHOICE)


def test_none_dominating_an_edge_lowers_its_score():
    # Node 0 has only two inputs, so look at node 1 (inputs 0, 1, 2) with equal betas.
    alpha = np.zeros((num_edges(4), len(PRIMS)))
    beta = np.zeros(num_edges(4))
    for source in range(3):
        alpha[edge_index(1, source), OP["bconv_3x3"]] = 2.0
    alpha[edge_index(1, 0), OP["none"]] = 10.0  # edge 0 -> node 1 is 'mostly none'
    edges = derive_cell(alpha, beta, PRIMS)
    assert edges[2:4] == (("bconv_3x3", 1), ("bconv_3x3", 2))
    assert all(op != "none" for op, _ in edges)


def test_only_none_in_search_space_is_an_error():
    with pytest.raises(ValueError, match="no op other than 'none'"):
        derive_cell(np.zeros((14, 1)), np.zeros(14), ["none"])


def test_ties_all_zero_logits():
    # Equal scores: lower source first; equal ops: the first non-'none' primitive.
    edges = derive_cell(np.zeros((14, len(PRIMS))), np.zeros(14), PRIMS)
    assert edges == tuple(("skip_connect", j) for _ in range(4) for j in (0, 1))


def test_op_tie_picks_lower_primitive_index():
    alpha, beta = _logits(NORMAL_CHOICE)
    e = edge_index(2, 1)
    alpha[e, OP["bdil_conv_3x3"]] = 5.0
    alpha[e, OP["bconv_5x5"]] = 5.0  # ties with bdil_conv_3x3 and comes first in PRIMS
    edges = derive_cell(alpha, beta, PRIMS)
    assert edges[4] == ("bconv_5x5", 1)


def test_edge_tie_picks_lower_sources():
    alpha, beta = _logits(NORMAL_CHOICE)
    # Node 3: all five inputs with identical logits -> sources 0 and 1.
    for source in range(5):
        e = edge_index(3, source)
        alpha[e] = 0.0
        alpha[e, OP["avg_pool_3x3"]] = 4.0
        beta[e] = 1.0
    edges = derive_cell(alpha, beta, PRIMS)
    assert edges[6:] == (("avg_pool_3x3", 0), ("avg_pool_3x3", 1))
    # Source 3 now leads; sources 0, 1, 2, 4 tie for second place and the lowest wins.
    beta[edge_index(3, 3)] = 2.0
    edges = derive_cell(alpha, beta, PRIMS)
    assert edges[6:] == (("avg_pool_3x3", 0), ("avg_pool_3x3", 3))


def test_score_combines_edge_weight_and_op_confidence():
    # Node 0 of a 2-step cell is forced (two inputs). Node 1 chooses 2 of 3 inputs:
    # source 0: beta high but op nearly uniform; sources 1, 2: op confident, beta lower.
    steps = 2
    alpha = np.zeros((num_edges(steps), len(PRIMS)))
    beta = np.zeros(num_edges(steps))
    e0, e1, e2 = (edge_index(1, s) for s in range(3))
    beta[e0], beta[e1], beta[e2] = 0.5, 0.0, 0.0
    alpha[e0, OP["bconv_3x3"]] = 0.1
    alpha[e1, OP["bconv_5x5"]] = 6.0
    alpha[e2, OP["max_pool_3x3"]] = 5.0
    edges = derive_cell(alpha, beta, PRIMS, steps=steps)
    assert edges[2:] == (("bconv_5x5", 1), ("max_pool_3x3", 2))
    # With a much larger beta the weak-op edge wins a place.
    beta[e0] = 8.0
    edges = derive_cell(alpha, beta, PRIMS, steps=steps)
    assert edges[2:] == (("bconv_3x3", 0), ("bconv_5x5", 1))


def _reference_derive(alpha, beta, steps):
    """Brute force: per node, the pair of inputs maximising (min score, then lexicographic)."""
    def softmax(v):
        v = np.exp(v - v.max())
        return v / v.sum()

    edges = []
    for node in range(steps):
        srcs = range(node + 2)
        w = softmax(np.array([beta[edge_index(node, s)] for s in srcs]))
        best = {}
        for s in srcs:
            p = softmax(alpha[edge_index(node, s)])
            k = max(range(1, len(PRIMS)), key=lambda o, p=p: (p[o], -o))
            best[s] = (PRIMS[k], w[s] * p[k])
        pair = max(itertools.combinations(srcs, 2),
                   key=lambda c, best=best: sorted((best[s][1] for s in c), reverse=True))
        edges.extend((best[s][0], s) for s in sorted(pair))
    return tuple(edges)


@pytest.mark.parametrize("seed", range(5))
def test_derive_cell_matches_brute_force_on_random_logits(seed):
    rng = np.random.default_rng(seed)
    alpha = rng.normal(scale=2.0, size=(14, len(PRIMS)))
    beta = rng.normal(scale=2.0, size=14)
    assert derive_cell(alpha, beta, PRIMS) == _reference_derive(alpha, beta, 4)


@pytest.mark.parametrize(
    "alpha_shape,beta_shape",
    [((13, 8), (14,)), ((14, 7), (14,)), ((14, 8), (13,)), ((14,), (14,)), ((14, 8), (14, 1))],
)
def test_derive_cell_shape_mismatch(alpha_shape, beta_shape):
    with pytest.raises(ValueError, match=re.escape("alpha must be [14, 8] and beta [14]")):
        derive_cell(np.zeros(alpha_shape), np.zeros(beta_shape), PRIMS)


def test_derive_cell_shape_mismatch_for_other_steps():
    with pytest.raises(ValueError, match=re.escape("alpha must be [9, 8] and beta [9]")):
        derive_cell(np.zeros((14, 8)), np.zeros(14), PRIMS, steps=3)


def test_derive_genotype_shape_mismatch_in_reduce_cell():
    a, b = _logits(NORMAL_CHOICE)
    with pytest.raises(ValueError, match="alpha must be"):
        derive_genotype(a, b, a[:-1], b, PRIMS)


# --------------------------------------------------------------------------------------------
# Genotype value semantics and JSON I/O
# --------------------------------------------------------------------------------------------


def test_genotype_normalises_lists_to_tuples_and_hashes():
    g = _good_genotype()
    assert isinstance(g.normal, tuple) and all(isinstance(e, tuple) for e in g.normal)
    assert isinstance(g.normal_concat, tuple)
    d = _good_dict()
    g2 = Genotype(tuple(map(tuple, d["normal"])), tuple(d["normal_concat"]),
                  tuple(map(tuple, d["reduce"])), tuple(d["reduce_concat"]))
    assert g == g2
    assert hash(g) == hash(g2)
    assert len({g, g2}) == 1


def test_genotype_accessors():
    g = _good_genotype()
    assert g.steps == 4
    assert g.cell(False) == (g.normal, g.normal_concat)
    assert g.cell(True) == (g.reduce, g.reduce_concat)
    assert g.ops_used() == set(ALLOWED)
    text = str(g)
    assert text.startswith("normal: n2<-[bconv_3x3(0), skip_connect(1)]")
    assert "reduce: n2<-[max_pool_3x3(0), bconv_5x5(1)]" in text
    assert "out=concat[2, 3, 4, 5]" in text


def test_to_dict_and_json():
    g = _good_genotype()
    assert g.to_dict() == _good_dict()
    assert json.loads(g.to_json()) == _good_dict()
    assert Genotype.from_json(g.to_json(), primitives=PRIMS) == g
    assert Genotype.from_dict(g.to_dict(), primitives=PRIMS) == g


def test_json_round_trip_through_file(tmp_path):
    a_n, b_n = _logits(NORMAL_CHOICE)
    a_r, b_r = _logits(REDUCE_CHOICE)
    g = derive_genotype(a_n, b_n, a_r, b_r, PRIMS)
    path = tmp_path / "sub" / "genotype.json"
    g.save(path)  # creates the missing directory
    assert path.is_file()
    assert json.loads(path.read_text(encoding="utf-8"))["format"] == FORMAT
    loaded = Genotype.load(path, primitives=PRIMS)
    assert loaded == g
    assert str(loaded) == str(g)
    # Saving again over the same path works and leaves no temporary files behind.
    loaded.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["genotype.json"]
    assert Genotype.load(str(path), primitives=PRIMS) == g


def test_from_dict_without_format_key_is_accepted():
    d = _good_dict()
    del d["format"]
    assert Genotype.from_dict(d, primitives=PRIMS) == _good_genotype()


# --------------------------------------------------------------------------------------------
# Validation errors
# --------------------------------------------------------------------------------------------


def _with(**changes) -> dict:
    d = _good_dict()
    d.update(changes)
    return d


def test_unknown_op_lists_allowed_ops():
    d = _good_dict()
    d["normal"][3] = ["conv_7x7", 2]
    with pytest.raises(GenotypeError, match=r"'normal' edge 3 uses unknown op 'conv_7x7'") as info:
        Genotype.from_dict(d, primitives=PRIMS)
    assert f"expected one of {ALLOWED}" in str(info.value)
    for op in ALLOWED:
        assert op in str(info.value)


def test_none_op_is_not_allowed_in_a_genotype():
    d = _good_dict()
    d["reduce"][0] = ["none", 0]
    with pytest.raises(GenotypeError, match=r"'reduce' edge 0 uses unknown op 'none'"):
        Genotype.from_dict(d, primitives=PRIMS)


def test_validate_uses_the_given_primitives():
    g = _good_genotype()
    with pytest.raises(GenotypeError, match=r"unknown op 'bdil_conv_3x3'.*expected one of"):
        g.validate(primitives=["none", "skip_connect", "max_pool_3x3", "avg_pool_3x3",
                               "bconv_3x3", "bconv_5x5", "bdil_conv_5x5"])


def test_bad_node_input_index():
    d = _good_dict()
    d["normal"][1] = ["skip_connect", 3]  # node 0 may only take states 0..1
    with pytest.raises(GenotypeError, match=r"'normal' edge 1 \(node 0\) takes input 3; "
                                            r"node 0 may only take states 0\.\.1"):
        Genotype.from_dict(d, primitives=PRIMS)


def test_self_and_negative_input_index():
    d = _good_dict()
    d["reduce"][7] = ["bconv_3x3", 6]  # node 3 (state 5) may only take states 0..4
    with pytest.raises(GenotypeError, match=r"'reduce' edge 7 \(node 3\) takes input 6"):
        Genotype.from_dict(d, primitives=PRIMS)
    d = _good_dict()
    d["normal"][2] = ["bconv_3x3", -1]
    with pytest.raises(GenotypeError, match=r"'normal' edge 2 \(node 1\) takes input -1"):
        Genotype.from_dict(d, primitives=PRIMS)


@pytest.mark.parametrize("concat", [[1, 2], [2, 6], [0], [], [2, 3, 4, 5, 6]])
def test_bad_concat_index(concat):
    with pytest.raises(GenotypeError, match=r"'normal_concat' = .* must name intermediate "
                                            r"states in 2\.\.5"):
        Genotype.from_dict(_with(normal_concat=concat), primitives=PRIMS)


def test_bad_reduce_concat_index():
    with pytest.raises(GenotypeError, match=re.escape("'reduce_concat' = [7]")):
        Genotype.from_dict(_with(reduce_concat=[7]), primitives=PRIMS)


def test_odd_number_of_pairs():
    d = _good_dict()
    d["normal"] = d["normal"][:7]
    with pytest.raises(GenotypeError, match=r"'normal' must list 2 \(op, input\) pairs per node; "
                                            r"got 7 pairs"):
        Genotype.from_dict(d, primitives=PRIMS)


def test_empty_cell():
    with pytest.raises(GenotypeError, match=r"'reduce' must list 2 \(op, input\) pairs per node; "
                                            r"got 0 pairs"):
        Genotype.from_dict(_with(reduce=[]), primitives=PRIMS)


def test_cells_with_different_node_counts():
    d = _good_dict()
    d["reduce"] = d["reduce"][:6]
    d["reduce_concat"] = [2, 3, 4]
    with pytest.raises(GenotypeError, match="same number of nodes"):
        Genotype.from_dict(d, primitives=PRIMS)


@pytest.mark.parametrize("text", ["", "{", "not json", '{"normal": [}', "{'normal': []}"])
def test_malformed_json_text(text):
    with pytest.raises(GenotypeError, match="not valid JSON"):
        Genotype.from_json(text, primitives=PRIMS)


def test_json_that_is_not_an_object():
    with pytest.raises(GenotypeError, match="expected a JSON object, got list"):
        Genotype.from_json("[1, 2]", primitives=PRIMS)


@pytest.mark.parametrize("key", ["normal", "normal_concat", "reduce", "reduce_concat"])
def test_missing_key(key):
    d = _good_dict()
    del d[key]
    with pytest.raises(GenotypeError, match=re.escape(f"missing keys ['{key}']")):
        Genotype.from_dict(d, primitives=PRIMS)


def test_missing_several_keys():
    with pytest.raises(GenotypeError, match=re.escape("missing keys ['normal_concat', 'reduce']")):
        Genotype.from_json('{"normal": [], "reduce_concat": []}', primitives=PRIMS)


@pytest.mark.parametrize(
    "entry",
    ["bconv_3x3", ["bconv_3x3"], ["bconv_3x3", 0, 1], [0, "bconv_3x3"], ["bconv_3x3", "0"],
     ["bconv_3x3", 1.0], ["bconv_3x3", True], {"op": "bconv_3x3", "input": 0}, None, 3],
)
def test_non_list_or_malformed_entry(entry):
    d = _good_dict()
    d["reduce"][2] = entry
    with pytest.raises(GenotypeError,
                       match=re.escape("'reduce' entries must be [op_name, input_index]; got")):
        Genotype.from_dict(d, primitives=PRIMS)


@pytest.mark.parametrize("field,value", [("normal", 5), ("normal_concat", 5),
                                         ("reduce_concat", ["a", 3])])
def test_wrong_container_types(field, value):
    with pytest.raises(GenotypeError, match="malformed genotype"):
        Genotype.from_dict(_with(**{field: value}), primitives=PRIMS)


def test_cell_given_as_string():
    # A string is iterable; each character is reported as a bad entry.
    with pytest.raises(GenotypeError, match="'normal' entries must be"):
        Genotype.from_dict(_with(normal="bconv_3x3"), primitives=PRIMS)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(GenotypeError, match=r"Genotype file .*nope\.json.* does not exist"):
        Genotype.load(path, primitives=PRIMS)


def test_directory_is_not_a_genotype_file(tmp_path):
    with pytest.raises(GenotypeError, match="does not exist"):
        Genotype.load(tmp_path, primitives=PRIMS)


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(GenotypeError, match=r"broken\.json: not valid JSON"):
        Genotype.load(path, primitives=PRIMS)
    d = _good_dict()
    d["normal"][0] = ["conv_9x9", 0]
    path.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(GenotypeError, match=r"broken\.json: 'normal' edge 0 uses unknown op"):
        Genotype.load(path, primitives=PRIMS)


def test_source_label_in_messages():
    with pytest.raises(GenotypeError, match=r"^my-run: missing keys"):
        Genotype.from_dict({}, source="my-run", primitives=PRIMS)


def test_genotype_error_is_a_value_error():
    assert issubclass(GenotypeError, ValueError)


# ------------------------------------------------------------------------------------------
# random_genotype
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 4, 5])
def test_random_genotype_is_valid_for_many_seeds(steps):
    for seed in range(200):
        g = random_genotype(PRIMS, steps=steps, rng=seed)
        assert g.steps == steps
        g.validate(PRIMS)
        for edges in (g.normal, g.reduce):
            assert len(edges) == 2 * steps
            for node in range(steps):
                (_, a), (_, b) = edges[2 * node], edges[2 * node + 1]
                assert a < b, f"seed {seed}: node {node} inputs {a}, {b} not distinct/ascending"
                assert 0 <= a and b < node + 2
        expected_concat = tuple(range(2, steps + 2))
        assert g.normal_concat == g.reduce_concat == expected_concat
        assert Genotype.from_json(g.to_json(), primitives=PRIMS) == g


def test_random_genotype_reproducible_from_a_seed():
    assert random_genotype(PRIMS, rng=7) == random_genotype(PRIMS, rng=7)
    assert (random_genotype(PRIMS, rng=np.random.default_rng(7))
            == random_genotype(PRIMS, rng=7))
    # A Generator is advanced in place: consecutive draws differ, and repeat with the seed.
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    draws_a = [random_genotype(PRIMS, rng=rng_a) for _ in range(5)]
    draws_b = [random_genotype(PRIMS, rng=rng_b) for _ in range(5)]
    assert draws_a == draws_b
    assert len(set(draws_a)) == 5
    assert len({random_genotype(PRIMS, rng=seed) for seed in range(20)}) == 20


def test_random_genotype_reaches_every_op_and_input_and_never_none():
    ops_seen: dict[tuple[str, int], set[str]] = {}
    inputs_seen: dict[tuple[str, int], set[tuple[int, int]]] = {}
    rng = np.random.default_rng(0)
    for _ in range(400):
        g = random_genotype(PRIMS, rng=rng)
        for cell in ("normal", "reduce"):
            edges = getattr(g, cell)
            for node in range(4):
                pair = edges[2 * node: 2 * node + 2]
                ops_seen.setdefault((cell, node), set()).update(op for op, _ in pair)
                inputs_seen.setdefault((cell, node), set()).add((pair[0][1], pair[1][1]))
    for (cell, node), ops in ops_seen.items():
        assert "none" not in ops
        assert ops == set(ALLOWED), f"{cell} node {node}: only {sorted(ops)} drawn"
        expected = set(itertools.combinations(range(node + 2), 2))
        assert inputs_seen[(cell, node)] == expected, f"{cell} node {node} inputs"


def test_random_genotype_op_choice_is_uniform():
    rng = np.random.default_rng(1)
    counts = dict.fromkeys(ALLOWED, 0)
    n = 500
    for _ in range(n):
        for op, _ in random_genotype(PRIMS, rng=rng).normal:
            counts[op] += 1
    expected = n * 8 / len(ALLOWED)
    for op, count in counts.items():
        assert abs(count - expected) < 0.15 * expected, (op, count, expected)


def test_random_genotype_uses_only_the_given_primitives():
    prims = ["none", "max_pool_3x3", "bconv_3x3"]
    seen = set()
    for seed in range(50):
        seen |= random_genotype(prims, steps=3, rng=seed).ops_used()
    assert seen == {"max_pool_3x3", "bconv_3x3"}
    assert random_genotype(["bconv_5x5"], rng=0).ops_used() == {"bconv_5x5"}


@pytest.mark.parametrize("prims,pattern", [
    ([], r"no op other than 'none'"),
    (["none"], r"no op other than 'none'"),
    (["bconv_3x3", "bconv_3x3"], r"\['bconv_3x3'\] are listed more than once"),
    (["bconv_3x3", ""], r"non-empty op names"),
    (["bconv_3x3", 3], r"non-empty op names"),
    ("bconv_3x3", r"sequence of op names"),
    (None, r"sequence of op names"),
])
def test_random_genotype_bad_primitives(prims, pattern):
    with pytest.raises(GenotypeError, match=pattern):
        random_genotype(prims, rng=0)


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_random_genotype_bad_steps(steps):
    with pytest.raises(GenotypeError, match=r"steps must be an integer >= 1"):
        random_genotype(PRIMS, steps=steps, rng=0)


@pytest.mark.parametrize("steps", [1, 2, 4, 5])
def test_node_inputs_partition_the_edges_and_edge_weights_normalise_per_node(steps):
    blocks = list(node_inputs(steps))
    assert [node for node, _ in blocks] == list(range(steps))
    covered = [e for _, edges in blocks for e in range(num_edges(steps))[edges]]
    assert covered == list(range(num_edges(steps)))  # in order, each edge once
    for node, edges in blocks:
        assert [edge_index(node, j) for j in range(node + 2)] == list(range(edges.start, edges.stop))
    beta = np.random.default_rng(steps).normal(size=num_edges(steps))
    w = edge_weights(beta, steps)
    for _, edges in blocks:
        assert w[edges].sum() == pytest.approx(1.0)
        e = np.exp(beta[edges])
        np.testing.assert_allclose(w[edges], e / e.sum())
